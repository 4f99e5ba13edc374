"""The store listener thread: call back on announcements, reconnect after errors, stop."""

from __future__ import annotations

import contextlib
import queue
import threading

#: Bound on every wait for the listener thread (never reached when all is well).
WAIT = 10.0


class FakeChannel:
    """A store channel: each subscription hands out announcements from a queue.

    ``failures`` subscriptions fail before one succeeds; ``break_next()`` makes
    the current subscription fail while it waits.
    """

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.subscriptions = 0
        self.closed = 0
        self.announcements: queue.Queue[str] = queue.Queue()
        self.subscribed = threading.Semaphore(0)

    @contextlib.contextmanager
    def subscribe(self):
        self.subscriptions += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store away")
        try:
            self.subscribed.release()

            def receive(timeout: float) -> bool:
                try:
                    item = self.announcements.get(timeout=timeout)
                except queue.Empty:
                    return False
                if item == "break":
                    raise ConnectionError("connection lost")
                return True

            yield receive
        finally:
            self.closed += 1


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Semaphore(0)

    def __call__(self) -> None:
        self.count += 1
        self.event.release()

    def wait(self, times: int = 1) -> None:
        for _ in range(times):
            assert self.event.acquire(timeout=WAIT)


class RecordingBackoff:
    """A Backoff whose delays are tiny and whose calls are recorded."""

    def __init__(self) -> None:
        self.delays = 0
        self.resets = 0

    def next_delay(self) -> float:
        self.delays += 1
        return 0.001

    def reset(self) -> None:
        self.resets += 1


def _start(channel, callback, backoff=None):
    from pyramid_pyncette.repository.listener import start_listener_thread

    return start_listener_thread(channel.subscribe, callback, backoff=backoff)


def test_calls_back_once_subscribed_and_on_each_announcement():
    channel, calls = FakeChannel(), Calls()
    stop = _start(channel, calls)
    try:
        calls.wait()  # jobs added before the subscription are looked for at once
        channel.announcements.put("job")
        channel.announcements.put("job")
        calls.wait(2)
        assert calls.count == 3
    finally:
        stop()
    assert channel.subscriptions == 1
    assert channel.closed == 1


def test_a_failed_subscription_is_retried_after_the_backoff_delay():
    channel, calls, backoff = FakeChannel(failures=3), Calls(), RecordingBackoff()
    stop = _start(channel, calls, backoff)
    try:
        calls.wait()
        assert channel.subscriptions == 4
        assert backoff.delays == 3
        assert backoff.resets == 1  # the working subscription starts the delays again
    finally:
        stop()


def test_a_lost_connection_reconnects_and_calls_back_again():
    channel, calls, backoff = FakeChannel(), Calls(), RecordingBackoff()
    stop = _start(channel, calls, backoff)
    try:
        calls.wait()
        channel.announcements.put("break")
        calls.wait()  # after reconnecting: what was announced meanwhile is looked for
        assert channel.subscriptions == 2
        assert channel.closed == 1
        assert backoff.delays == 1
    finally:
        stop()
    assert channel.closed == 2


def test_an_error_in_the_callback_resubscribes_instead_of_ending_the_thread():
    channel, backoff = FakeChannel(), RecordingBackoff()
    seen = Calls()
    failed = []

    def callback():
        if not failed:
            failed.append(True)
            raise RuntimeError("callback broke")
        seen()

    stop = _start(channel, callback, backoff)
    try:
        seen.wait()
        assert channel.subscriptions == 2
        assert backoff.delays == 1
    finally:
        stop()


def test_stop_ends_the_thread():
    channel, calls = FakeChannel(), Calls()
    before = {t.ident for t in threading.enumerate() if t.name == "pyncette-listener"}
    stop = _start(channel, calls)
    calls.wait()
    stop()
    after = {t.ident for t in threading.enumerate() if t.name == "pyncette-listener"}
    assert after <= before
    assert channel.closed == 1


def test_the_default_backoff_waits_as_the_stores_always_did():
    from pyramid_pyncette.repository.listener import listener_backoff

    backoff = listener_backoff()
    assert [backoff.next_delay() for _ in range(8)] == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0]

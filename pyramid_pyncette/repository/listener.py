"""The thread that hears a store announce new jobs (PostgreSQL LISTEN, Redis pub/sub).

A store without a channel (SQLite) gives it a probe instead: a cheap read of a
marker that changes when another connection commits (see :func:`probe_receive`).

A store with a notification channel gives :func:`start_listener_thread` a
``subscribe`` function; this module owns the rest: the daemon thread, the stop
event, reconnecting with :class:`~pyramid_pyncette.backoff.Backoff` while the
store is away, and calling back once after every (re)connection, since jobs
added while nobody listened were announced to no one. Meanwhile the daemon
polls, so an outage of the channel delays jobs but never loses them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from ..backoff import Backoff

__all__ = ["Receive", "Subscribe", "probe_receive", "start_listener_thread", "watched_receive"]

log = logging.getLogger(__name__)

#: Waits at most ``timeout`` seconds for an announcement; True if one came.
Receive = Callable[[float], bool]
#: Opens a subscription to the store's channel; closing it unsubscribes.
Subscribe = Callable[[], AbstractContextManager[Receive]]

#: Reads a store's change marker: any value, compared with the previous read.
ReadMarker = Callable[[], object]

#: Seconds between checks of the stop event while no announcement comes.
RECEIVE_TIMEOUT = 1.0
#: How long :func:`start_listener_thread`'s stopper waits for the thread.
STOP_TIMEOUT = 5.0


def listener_backoff() -> Backoff:
    """The waits between reconnections: 0.4 s, doubling, at most 30 s."""
    return Backoff(first=0.4, cap=30.0)


def start_listener_thread(
    subscribe: Subscribe,
    callback: Callable[[], None],
    *,
    backoff: Backoff | None = None,
    name: str = "pyncette-listener",
) -> Callable[[], None]:
    """Call ``callback`` on every announcement, from a daemon thread; return its stopper.

    ``callback`` also runs right after each successful subscription. Any
    error (from the store or from ``callback``) closes the subscription and
    opens a new one after the next :class:`Backoff` delay; the stopper sets
    the stop event and waits up to :data:`STOP_TIMEOUT` for the thread.
    """
    stopped = threading.Event()
    retry = backoff if backoff is not None else listener_backoff()

    def listen() -> None:
        while not stopped.is_set():
            try:
                with subscribe() as receive:
                    callback()  # anything added while we were not listening
                    retry.reset()
                    while not stopped.is_set():
                        if receive(RECEIVE_TIMEOUT):
                            callback()
            except Exception as exc:
                delay = retry.next_delay()
                log.debug("job announcements unavailable (%s); polling meanwhile", exc)
                stopped.wait(delay)

    thread = threading.Thread(target=listen, name=name, daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join(STOP_TIMEOUT)

    return stop


def probe_receive(
    read: ReadMarker,
    interval: float,
    sleep: Callable[[float], object] = time.sleep,
    *,
    idle_interval: float | None = None,
    idle_after: float = 0.0,
    monotonic: Callable[[], float] = time.monotonic,
) -> Receive:
    """A :data:`Receive` for a store without a channel: ``read()`` every ``interval`` seconds.

    The marker is read once now; each call then waits ``interval`` (at most
    its ``timeout``), reads it again and answers whether it changed. A call
    returns after one wait, so the listener's stop event is checked between
    probes. Errors from ``read`` propagate: the listener reconnects. With
    ``idle_interval``, the wait stretches to it once ``idle_after`` seconds
    passed without a change (reads cost an idle daemon less; the first change
    after a quiet spell is seen later), and shrinks back at the next change.
    """
    last = read()
    changed_at = monotonic()

    def receive(timeout: float) -> bool:
        nonlocal last, changed_at
        wait = interval
        if idle_interval is not None and monotonic() - changed_at >= idle_after:
            wait = idle_interval
        sleep(min(wait, timeout))
        value = read()
        if value == last:
            return False
        last, changed_at = value, monotonic()
        return True

    return receive


def watched_receive(
    read: ReadMarker,
    wait: Callable[[float], bool],
    interval: float,
    settle: float = 0.001,
    settle_reads: int = 50,
    sleep: Callable[[float], object] = time.sleep,
) -> Receive:
    """A :data:`Receive` woken by ``wait`` (True: the store's file was written to).

    Like :func:`probe_receive`, but each call waits for a write (at most
    ``interval``) instead of a fixed time. A write can come before the commit
    it belongs to is visible (the marker then reads unchanged): after one,
    the marker is read again every ``settle`` seconds, up to ``settle_reads``
    times, before waiting for the next write.
    """
    last = read()
    rereads = 0

    def receive(timeout: float) -> bool:
        nonlocal last, rereads
        if rereads:
            rereads -= 1
            sleep(min(settle, timeout))
            written = False
        else:
            written = wait(min(interval, timeout))
        value = read()
        if value != last:
            last, rereads = value, 0
            return True
        if written:
            rereads = settle_reads
        return False

    return receive

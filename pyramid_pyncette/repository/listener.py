"""The thread that hears a store announce new jobs (PostgreSQL LISTEN, Redis pub/sub).

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
from collections.abc import Callable
from contextlib import AbstractContextManager

from ..backoff import Backoff

__all__ = ["Receive", "Subscribe", "start_listener_thread"]

log = logging.getLogger(__name__)

#: Waits at most ``timeout`` seconds for an announcement; True if one came.
Receive = Callable[[float], bool]
#: Opens a subscription to the store's channel; closing it unsubscribes.
Subscribe = Callable[[], AbstractContextManager[Receive]]

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

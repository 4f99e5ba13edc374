"""Waiting out a store outage: exponential backoff, optionally jittered.

The daemon's lease loop, its final writes at shutdown and the listener
threads of the stores all retry a store that went away; they share this one
rule for how long to wait between tries.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """The delays between tries of something that keeps failing.

    The n-th delay in a row is ``min(cap, first * 2 ** (n - 1))`` seconds;
    with ``jitter`` it is then scaled by a random factor between
    ``1 - jitter`` and 1, so that daemons that lost the store together do not
    all come back in the same instant. :meth:`reset` after a success starts
    again from ``first``. ``uniform`` draws the factor (``random.uniform``;
    tests pass their own).
    """

    def __init__(
        self,
        first: float,
        cap: float,
        jitter: float = 0.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"Backoff needs 0 < first <= cap, got first={first} cap={cap}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"Backoff jitter must be between 0 and 1, got {jitter}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._uniform = uniform
        #: Failures since the last :meth:`reset`.
        self.failures = 0

    def reset(self) -> None:
        """Forget the failures: the next delay is ``first`` again."""
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return the seconds to wait before the next try."""
        self.failures += 1
        # A bounded exponent: a long outage never overflows a float.
        delay = min(self.cap, self.first * 2.0 ** min(self.failures - 1, 64))
        if self.jitter:
            delay *= self._uniform(1.0 - self.jitter, 1.0)
        return delay

"""Compare queue listings by their backlog counts alone.

:class:`~pyramid_pyncette.jobs.QueueInfo` also counts jobs by state and
gives the oldest due time; tests about the backlog and running counts
compare only those (tests/test_metrics_store.py checks the rest).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyramid_pyncette.jobs import QueueInfo


def backlog(queues: Iterable[QueueInfo]) -> list[QueueInfo]:
    """``queues`` with only their name, paused flag, due and running counts."""
    return [QueueInfo(q.name, q.paused, q.due, q.running) for q in queues]

"""An in-process store for unit tests and single-process development.

Jobs live in a dict; a heap of ``(due_at, id)`` entries answers "what is due"
in O(due · log n). Heap entries are invalidated lazily: an entry counts only
while it matches the job's current ``due_at``.
"""

from __future__ import annotations

import builtins
import functools
import heapq
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..jobs import Job, Lease, Outcome
from ..policy import plan_claim, plan_completion
from .base import JobPage, Repository
from .rows import storable_values

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """``method`` run while holding the repository's lock."""

    @functools.wraps(method)
    def locked(self: Any, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class MemoryRepository(Repository):
    """A thread-safe in-memory :class:`Repository` (``memory://``)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._lock = threading.RLock()

    def _store(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.due_at is not None:
            heapq.heappush(self._heap, (job.due_at, job.id))

    def _is_current(self, due_at: datetime, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.due_at == due_at

    def add(self, jobs: Sequence[Job], replace: bool = True) -> None:
        with self._lock:
            for job in jobs:
                if not replace and job.id in self._jobs:
                    continue
                self._store(job)

    # The base class's multi-step writes, each made atomic by the one lock.
    apply = _locked(Repository.apply)
    stage = _locked(Repository.stage)
    publish = _locked(Repository.publish)
    withdraw = _locked(Repository.withdraw)

    def remove(self, ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {job_id for job_id in ids if self._jobs.pop(job_id, None) is not None}

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        with self._lock:
            ids = sorted(
                job_id
                for job_id, job in self._jobs.items()
                if (cursor is None or job_id > cursor) and (task is None or job.task == task)
            )
            page = [self._jobs[job_id] for job_id in ids[: limit + 1]]
        more = len(page) > limit
        page = page[:limit]
        return JobPage(page, page[-1].id if more else None)

    def claim(
        self, now: datetime, limit: int, token: str, default_lease: float
    ) -> builtins.list[Lease]:
        leases: list[Lease] = []
        with self._lock:
            while self._heap and len(leases) < limit and self._heap[0][0] <= now:
                due_at, job_id = heapq.heappop(self._heap)
                if not self._is_current(due_at, job_id):
                    continue
                plan = plan_claim(self._jobs[job_id], now, token, default_lease)
                if plan.action == "delete":
                    del self._jobs[job_id]
                else:
                    self._store(plan.job)
                leases.append(plan.lease)
        return leases

    def complete(self, outcomes: Sequence[Outcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                plan = plan_completion(outcome)
                job = self._jobs.get(plan.job_id)
                if job is None or (plan.token is not None and job.locked_by != plan.token):
                    continue
                # The text every other store would keep, so tests see what production stores.
                values = storable_values(plan.values)
                if plan.action == "delete":
                    del self._jobs[plan.job_id]
                elif plan.action == "settle":
                    self._store(job.replace(locked_by=None, **values))
                else:
                    self._jobs[plan.job_id] = job.replace(**values)

    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        held = set()
        with self._lock:
            for job_id, token, seconds in leases:
                job = self._jobs.get(job_id)
                if job is not None and job.locked_by == token:
                    self._store(job.replace(due_at=now + timedelta(seconds=seconds)))
                    held.add(job_id)
        return held

    def release(self, leases: Sequence[Lease]) -> None:
        with self._lock:
            for lease in leases:
                job = self._jobs.get(lease.job.id)
                if job is None or lease.token is None or job.locked_by != lease.token:
                    continue
                self._store(
                    job.replace(
                        locked_by=None,
                        due_at=lease.scheduled_at,
                        attempts=max(job.attempts - 1, 0),
                    )
                )

    def next_due(self) -> datetime | None:
        with self._lock:
            while self._heap and not self._is_current(*self._heap[0]):
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

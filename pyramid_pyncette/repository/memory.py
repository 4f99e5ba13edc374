"""An in-process store for unit tests and single-process development.

Jobs live in a dict; one heap of ``(due_at, id)`` entries per queue answers
"what is due" in O(due · log n). Heap entries are invalidated lazily: an
entry counts only while it matches the job's current ``due_at`` and queue.
The run history is a bounded list, newest last.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import functools
import heapq
import itertools
import re
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..jobs import (
    MAX_RUN_ERROR_LENGTH,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
    job_state_counts,
)
from ..policy import claimed_at, plan_claim, plan_completion
from .base import JobPage, Repository, RunPage
from .rows import storable_text, storable_values

#: Most run records the memory store keeps (the oldest go first).
MAX_MEMORY_RUNS = 100_000

#: A run record id as :meth:`MemoryRepository.complete` writes it (a cursor is one).
_RUN_CURSOR = re.compile(r"[0-9a-f]{16}")

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

    def __init__(self, max_runs: int = MAX_MEMORY_RUNS) -> None:
        self._jobs: dict[str, Job] = {}
        self._heaps: dict[str, list[tuple[datetime, str]]] = {}
        self._paused: set[str] = set()
        self._runs: collections.deque[RunRecord] = collections.deque(maxlen=max_runs)
        self._run_ids = itertools.count(1)
        self._lock = threading.RLock()

    def _store(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.due_at is not None:
            heapq.heappush(self._heaps.setdefault(job.queue, []), (job.due_at, job.id))

    def _is_current(self, queue: str, due_at: datetime, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.due_at == due_at and job.queue == queue

    def _heads(self, queues: frozenset[str] | None) -> dict[str, list[tuple[datetime, str]]]:
        """The heaps of ``queues`` (None: all) that are not paused, each topped by a current
        entry (stale entries on top are dropped; empty heaps are left out)."""
        heads = {}
        for queue, heap in self._heaps.items():
            if queue in self._paused or (queues is not None and queue not in queues):
                continue
            while heap and not self._is_current(queue, *heap[0]):
                heapq.heappop(heap)
            if heap:
                heads[queue] = heap
        return heads

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
        return JobPage.read_ahead(page, limit)

    def claim(
        self,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        return self.claim_ahead(now, now, limit, token, default_lease, queues)

    def claim_ahead(
        self,
        now: datetime,
        until: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        leases: list[Lease] = []
        # Leased jobs whose lease ends within the lead: their holder may still renew.
        held: list[tuple[list[Any], Any]] = []
        with self._lock:
            heads = self._heads(queues)
            while heads and len(leases) < limit:
                queue = min(heads, key=lambda name: heads[name][0])
                heap = heads[queue]
                if heap[0][0] > until:
                    break
                due_at, job_id = heapq.heappop(heap)
                while heap and not self._is_current(queue, *heap[0]):
                    heapq.heappop(heap)
                if not heap:
                    del heads[queue]
                if not self._is_current(queue, due_at, job_id):
                    continue
                at = claimed_at(due_at, now, until)
                if at > now and self._jobs[job_id].locked_by is not None:
                    held.append((heap, (due_at, job_id)))
                    continue
                plan = plan_claim(self._jobs[job_id], at, token, default_lease)
                if plan.action == "delete":
                    del self._jobs[job_id]
                else:
                    self._store(plan.job)
                leases.append(plan.lease)
            for heap, entry in held:
                heapq.heappush(heap, entry)
        return leases

    def complete(self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()) -> None:
        with self._lock:
            for run in runs:
                # The text every other store would keep: bounded, without NUL or lone surrogates.
                error = storable_text(run.error, MAX_RUN_ERROR_LENGTH)
                run_id = f"{next(self._run_ids):016x}"
                self._runs.append(dataclasses.replace(run, id=run_id, error=error))
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
                        due_at=lease.attempt_due_at,
                        attempts=max(job.attempts - 1, 0),
                    )
                )

    def next_due(self, queues: frozenset[str] | None = None) -> datetime | None:
        with self._lock:
            heads = self._heads(queues)
            return min((heap[0][0] for heap in heads.values()), default=None)

    # -- queues ------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool) -> bool:
        with self._lock:
            changed = (name in self._paused) != paused
            if paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)
            return changed

    def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused)

    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        with self._lock:
            due: collections.Counter[str] = collections.Counter()
            running: collections.Counter[str] = collections.Counter()
            states: dict[str, dict[str, int]] = {}
            oldest: dict[str, datetime] = {}
            names = set(self._paused)
            for job in self._jobs.values():
                queue = job.queue
                names.add(queue)
                state = job.state
                counts = states.get(queue)
                if counts is None:
                    counts = states[queue] = job_state_counts()
                counts[state] += 1
                if state == "running":
                    running[queue] += 1
                elif job.locked_by is None and job.due_at is not None:
                    if job.due_at <= now:
                        due[queue] += 1
                    if state != "paused" and (queue not in oldest or job.due_at < oldest[queue]):
                        oldest[queue] = job.due_at
            return [
                QueueInfo(
                    name,
                    name in self._paused,
                    due[name],
                    running[name],
                    states.get(name) or job_state_counts(),
                    oldest.get(name),
                )
                for name in sorted(names)
            ]

    # -- run history -------------------------------------------------------

    def list_runs(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        if cursor is not None and not _RUN_CURSOR.fullmatch(cursor):
            raise ValueError(
                f"{cursor!r} is not a run cursor of this store: pass the next_cursor of a page"
            )
        found: list[RunRecord] = []
        with self._lock:
            for run in reversed(self._runs):
                if cursor is not None and str(run.id) >= cursor:
                    continue
                if not run.matches(job_id, task, queue, outcomes):
                    continue
                found.append(run)
                if len(found) > limit:
                    break
        return RunPage.read_ahead(found, limit)

    def prune_runs(self, before: datetime, limit: int) -> int:
        with self._lock:
            old = [run for run in self._runs if run.finished_at < before][:limit]
            if not old:
                return 0
            gone = {id(run) for run in old}
            kept = [run for run in self._runs if id(run) not in gone]
            self._runs.clear()
            self._runs.extend(kept)
            return len(old)

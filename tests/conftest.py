"""Shared fixtures: one application per test, on every job store, on a fake clock.

Adding a store is one entry in :data:`STORES`: a name (the test id) and a
factory that turns the test's ``tmp_path`` into a ``pyncette.url`` (it may
call ``pytest.skip`` when the store is not available).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pyramid import testing as pyramid_testing

from pyramid_pyncette.testing import FakeClock
from pyramid_pyncette.worker import Worker

StoreFactory = Callable[[Path], str]

#: Every store the conformance suite runs against, by test id.
STORES: dict[str, StoreFactory] = {
    "memory": lambda tmp_path: "memory://",
    "sqlite": lambda tmp_path: f"sqlite:///{tmp_path}/jobs.sqlite",
}


@pytest.fixture(params=list(STORES), ids=list(STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``pyncette.url`` of a fresh, empty store."""
    return STORES[request.param](tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    """A clock that starts at 2030-01-01T00:00:00Z and moves only when told to."""
    return FakeClock()


@dataclass(frozen=True)
class Call:
    """One run of a test task, as seen from inside the task."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_id: str
    scheduled_at: datetime
    attempt: int
    at: datetime


class TaskError(RuntimeError):
    """What the ``fail`` test task raises."""


@dataclass
class App:
    """A configured application plus the handles tests drive it with."""

    config: Any
    registry: Any
    scheduler: Any
    clock: FakeClock
    worker: Worker
    calls: list[Call] = field(default_factory=list)
    start: datetime | None = None

    @property
    def repository(self) -> Any:
        return self.scheduler.repository

    def run_pending(self, now: datetime | None = None) -> int:
        """Run everything due at ``now`` (default: the clock's time)."""
        return self.worker.run_pending(self.clock() if now is None else now)

    def calls_of(self, task: str) -> list[Call]:
        return [call for call in self.calls if call.task == task]


def advance_and_run(app: App, seconds: float, step: float = 1.0) -> int:
    """Advance the clock ``seconds`` in ``step``-sized moves, running due jobs after each.

    Returns how many runs happened in total.
    """
    steps = round(seconds / step)
    assert steps * step == pytest.approx(seconds), "seconds must be a multiple of step"
    total = 0
    for _ in range(steps):
        app.clock.advance(step)
        total += app.run_pending()
    return total


class DummyDataManager:
    """A transaction data manager that records whether its transaction committed."""

    def __init__(self) -> None:
        self.transaction_manager = None
        self.events: list[str] = []

    @property
    def outcome(self) -> str | None:
        """``'commit'``, ``'abort'`` or ``None`` while undecided."""
        for event in reversed(self.events):
            if event in ("commit", "abort"):
                return event
        return None

    def abort(self, txn: Any) -> None:
        self.events.append("abort")

    def tpc_begin(self, txn: Any) -> None:
        self.events.append("tpc_begin")

    def commit(self, txn: Any) -> None:
        self.events.append("tpc_commit")

    def tpc_vote(self, txn: Any) -> None:
        self.events.append("tpc_vote")

    def tpc_finish(self, txn: Any) -> None:
        self.events.append("commit")

    def tpc_abort(self, txn: Any) -> None:
        self.events.append("abort")

    def sortKey(self) -> str:
        return f"dummy-{id(self)}"


def _recording(calls: list[Call], name: str, *, fail: bool = False) -> Callable[..., Any]:
    def record(request, *args, **kwargs):
        job = request.job
        calls.append(
            Call(
                task=name,
                args=args,
                kwargs=kwargs,
                job_id=job.id,
                scheduled_at=job.scheduled_at,
                attempt=job.attempt,
                at=request.registry.scheduler.now(),
            )
        )
        if fail:
            raise TaskError(f"boom from {name} attempt {job.attempt}")
        return "ok"

    record.__name__ = record.__qualname__ = name
    return record


def _async_recording(calls: list[Call], name: str) -> Callable[..., Any]:
    sync = _recording(calls, name)

    async def record(request, *args, **kwargs):
        return sync(request, *args, **kwargs)

    record.__name__ = record.__qualname__ = name
    return record


MakeApp = Callable[..., App]


@pytest.fixture
def make_app(store_url: str, clock: FakeClock) -> Iterator[MakeApp]:
    """Build the application under test (call it once per test).

    Every app registers the tasks ``record`` (returns ``'ok'``), ``fail``
    (raises :class:`TaskError`) and ``async_record`` (a coroutine function);
    each appends a :class:`Call` to ``app.calls``. ``tasks`` adds more:
    ``{name: func}`` or ``{name: (func, {directive keywords})}``.
    ``configure(config, app_calls)`` runs before the configuration is
    committed (subscribers, periodic tasks...).
    """
    apps: list[App] = []

    def build(
        tasks: dict[str, Any] | None = None,
        configure: Callable[[Any, list[Call]], None] | None = None,
    ) -> App:
        calls: list[Call] = []
        config = pyramid_testing.setUp(settings={"pyncette.url": store_url}, autocommit=False)
        config.include("pyramid_pyncette")
        config.add_pyncette_task(_recording(calls, "record"), name="record")
        config.add_pyncette_task(_recording(calls, "fail", fail=True), name="fail")
        config.add_pyncette_task(_async_recording(calls, "async_record"), name="async_record")
        for name, spec in (tasks or {}).items():
            func, options = spec if isinstance(spec, tuple) else (spec, {})
            config.add_pyncette_task(func, name=name, **options)
        if configure is not None:
            configure(config, calls)
        config.commit()
        registry = config.registry
        registry.scheduler.clock = clock
        app = App(
            config=config,
            registry=registry,
            scheduler=registry.scheduler,
            clock=clock,
            worker=Worker(registry, clock=clock),
            calls=calls,
            start=clock(),
        )
        apps.append(app)
        return app

    yield build

    for app in reversed(apps):
        pyramid_testing.tearDown()
        app.scheduler.repository.close()


@pytest.fixture
def app(make_app: MakeApp) -> App:
    """The application with only the standard test tasks."""
    return make_app()


@pytest.fixture
def tick() -> Callable[..., int]:
    """``tick(app, seconds, step=1.0)``: see :func:`advance_and_run`."""
    return advance_and_run


@pytest.fixture
def data_manager() -> DummyDataManager:
    """A fresh :class:`DummyDataManager`."""
    return DummyDataManager()

"""Shared fixtures: one application per test, on every job store, on a fake clock.

Adding a store is one entry in :data:`STORES`: a name (the test id) and a
factory that turns the test's ``request`` and ``tmp_path`` into the settings
of a fresh, empty store: ``pyncette.url`` plus anything else that isolates
it (it may call ``pytest.skip`` when the store is not available).

The PostgreSQL and MariaDB stores use real servers from :mod:`tests.servers`,
started once per session on first use; each test gets its own table
(``pyncette.table_name``) in one shared database. The Redis stores (one
server, and a Redis Cluster of three masters) give each test a namespace of
its own. Without the server binaries those tests are skipped, or fail under
``--require-backends``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pyramid import testing as pyramid_testing

from pyramid_pyncette.testing import FakeClock
from pyramid_pyncette.worker import Worker
from tests.daemon import REDIS_CLUSTER, REDIS_CLUSTER_SUPPORTED, store_supported

pytest_plugins = ["tests.servers", "tests.browser", "tests.moto_server"]

StoreSettings = dict[str, str]
StoreFactory = Callable[[pytest.FixtureRequest, Path], StoreSettings]


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _server_store(fixture: str) -> StoreFactory:
    """A store in the session's ``fixture`` server, in a table of its own."""

    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
        server = request.getfixturevalue(fixture)
        server.start()  # no-op unless an earlier test stopped it and failed to start it again
        return {"pyncette.url": server.url, "pyncette.table_name": _unique("jobs")}

    return factory


def _redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    server = request.getfixturevalue("redis_server")
    server.start()
    return {"pyncette.url": server.url, "pyncette.redis_namespace": _unique("t")}


def _redis_cluster_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """A namespace of its own on the session's three-master Redis Cluster."""
    cluster = request.getfixturevalue("redis_cluster_server")
    cluster.start()  # brings back a node an earlier test stopped and failed to restart
    return {"pyncette.url": cluster.url, "pyncette.redis_namespace": _unique("t")}


#: Every store the conformance suite runs against, by test id.
STORES: dict[str, StoreFactory] = {
    "memory": lambda request, tmp_path: {"pyncette.url": "memory://"},
    "sqlite": lambda request, tmp_path: {"pyncette.url": f"sqlite:///{tmp_path}/jobs.sqlite"},
    "postgresql": _server_store("postgresql_server"),
    "mariadb": _server_store("mariadb_server"),
    "dynamodb": lambda request, tmp_path: {
        "pyncette.url": request.getfixturevalue("dynamodb_server").url(_unique("jobs"))
    },
}


# The Redis stores join the suite as soon as the package supports their URLs.
if store_supported("redis://127.0.0.1:6379/0"):
    STORES["redis"] = _redis_store
if REDIS_CLUSTER_SUPPORTED:
    STORES[REDIS_CLUSTER] = _redis_cluster_store


@pytest.fixture(params=list(STORES), ids=list(STORES))
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """The settings (``pyncette.url`` and friends) of a fresh, empty store."""
    return dict(STORES[request.param](request, tmp_path))


@pytest.fixture
def store_url(store_settings: StoreSettings) -> str:
    """The ``pyncette.url`` of a fresh, empty store."""
    return store_settings["pyncette.url"]


#: The settings a configurator gets when a test names none: a store in memory.
MEMORY_SETTINGS: StoreSettings = {"pyncette.url": "memory://"}

MakeConfig = Callable[..., Any]


@pytest.fixture
def make_config() -> Iterator[MakeConfig]:
    """``make_config(settings=None, include=("pyramid_pyncette",))``: a test configurator.

    It comes from ``pyramid.testing.setUp`` without autocommit, so the test
    adds what it needs and commits (``config.commit()`` or
    ``config.make_wsgi_app()``). ``settings`` default to
    :data:`MEMORY_SETTINGS` and are used as given otherwise; ``include``
    names what to include, in order. Every configurator is torn down after
    the test.
    """
    made = []

    def build(
        settings: Mapping[str, Any] | None = None,
        include: Iterable[str] = ("pyramid_pyncette",),
    ) -> Any:
        values = MEMORY_SETTINGS if settings is None else settings
        config = pyramid_testing.setUp(settings=dict(values), autocommit=False)
        made.append(config)
        for name in include:
            config.include(name)
        return config

    yield build

    for _ in made:
        pyramid_testing.tearDown()


def include_pyncette(settings: Mapping[str, Any]) -> None:
    """Include pyramid_pyncette with ``settings`` in a throwaway configurator, and commit.

    For tests of what the include refuses: it raises what the include
    raises. The configurator autocommits (so a refusal surfaces at the
    include) and is torn down before this returns.
    """
    config = pyramid_testing.setUp(settings=dict(settings))
    try:
        config.include("pyramid_pyncette")
        config.commit()
    finally:
        pyramid_testing.tearDown()


@pytest.fixture
def config(make_config: MakeConfig) -> Any:
    """A configurator on a memory store with pyramid_pyncette included, not yet committed."""
    return make_config()


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
def make_app(
    make_config: MakeConfig, store_settings: StoreSettings, clock: FakeClock
) -> Iterator[MakeApp]:
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
        config = make_config(store_settings)
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
        # PostgreSQL and MariaDB claim by the database's clock by default: use the fake one.
        registry.scheduler.repository.store_clock = False
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

    # Before make_config tears the configurators down.
    for app in reversed(apps):
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

"""A small application for the transaction tests.

The app database is a SQLite file reached through SQLAlchemy and zope.sqlalchemy, set up the
way the Pyramid cookiecutter does it: a session factory on the registry and a reified
``request.dbsession`` joined to ``request.tm``. It holds one tiny ``notes`` table.

:func:`configurator` builds the configurator (pyramid_tm, optionally pyramid_retry, this
module, pyramid_pyncette); the tests add their views and tasks to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from transaction.interfaces import IDataManagerSavepoint, ISavepointDataManager
from zope.interface import implementer


class Base(DeclarativeBase):
    pass


class Note(Base):
    """One row of the app's own data."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.String(200))


def get_engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


def get_session_factory(engine: sa.Engine) -> sessionmaker:
    return sessionmaker(bind=engine)


def get_tm_session(session_factory: sessionmaker, transaction_manager: Any, request: Any = None):
    dbsession = session_factory(info={"request": request})
    zope.sqlalchemy.register(dbsession, transaction_manager=transaction_manager)
    return dbsession


def get_session(request: Any):
    """The ``pyncette.session_hook`` of the shared-database mode."""
    return request.dbsession


def includeme(config: Configurator) -> None:
    """The models include: engine, tables, session factory and ``request.dbsession``."""
    settings = config.get_settings()
    engine = get_engine(settings["sqlalchemy.url"])
    Base.metadata.create_all(engine)
    session_factory = get_session_factory(engine)
    config.registry.txapp_engine = engine
    config.registry["dbsession_factory"] = session_factory
    config.add_request_method(
        lambda request: get_tm_session(session_factory, request.tm, request=request),
        "dbsession",
        reify=True,
    )


def configurator(
    tmp_path: Any, *, shared: bool = False, retry: bool = False, tm: bool = True, **settings: Any
):
    """The configurator of a test app whose databases live in ``tmp_path``.

    ``shared`` puts the jobs table in the app database and sets ``pyncette.session_hook``;
    ``retry`` includes pyramid_retry with three attempts; ``tm=False`` leaves pyramid_tm out.
    ``settings`` override the rest (``None`` removes a key).
    """
    app_url = f"sqlite:///{tmp_path}/app.sqlite"
    base: dict[str, Any] = {
        "sqlalchemy.url": app_url,
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "pyncette.url": app_url if shared else f"sqlite:///{tmp_path}/jobs.sqlite",
    }
    if shared:
        base["pyncette.session_hook"] = "tests.txapp:get_session"
    if retry:
        base["retry.attempts"] = "3"
    base.update(settings)
    base = {key: value for key, value in base.items() if value is not None}
    config = Configurator(settings=base)
    if tm:
        config.include("pyramid_tm")
    if retry:
        config.include("pyramid_retry")
    config.include("tests.txapp")
    config.include("pyramid_pyncette")
    return config


def note_bodies(registry: Any) -> list[str]:
    """The committed notes, read through a connection of their own."""
    with registry.txapp_engine.connect() as conn:
        return list(conn.execute(sa.select(Note.body).order_by(Note.id)).scalars())


# -- tasks ------------------------------------------------------------------


def calls_of(registry: Any) -> list[tuple[Any, ...]]:
    """What the tasks below were called with, in order."""
    calls = getattr(registry, "txapp_calls", None)
    if calls is None:
        calls = registry.txapp_calls = []
    return calls


def noop(request, *args):
    calls_of(request.registry).append(("noop", request.job.id, *args))


def write_note(request, body):
    """Insert a note; while ``registry.txapp_crashes`` is positive, the commit fails."""
    registry = request.registry
    calls_of(registry).append(("write_note", request.job.id, body))
    request.dbsession.add(Note(body=body))
    if getattr(registry, "txapp_crashes", 0) > 0:
        registry.txapp_crashes -= 1
        request.tm.get().join(VoteFailure("crash before the app database commits"))


def chain(request, then, fail=False):
    """Schedule ``noop`` as job ``then`` through ``request.scheduler``; maybe fail after."""
    calls_of(request.registry).append(("chain", request.job.id, then))
    request.scheduler.add_async_job(noop, args=[then], job_id=then)
    if fail:
        raise RuntimeError("the parent job failed after scheduling its follow-up")


# -- data managers -----------------------------------------------------------


class CommitFailed(Exception):
    """What :class:`VoteFailure` raises."""


class VoteFailure:
    """A data manager that fails the commit in ``tpc_vote``.

    Its default sort key orders it before zope.sqlalchemy (``~sqlalchemy:...``), whose
    ``tpc_vote`` is where the app database really commits, and after pyramid_pyncette's own
    data manager (``pyramid_pyncette:...``).
    """

    def __init__(
        self,
        message: str,
        sort_key: str = "pyramid_pyncette~vote-failure",
        on_vote: Callable[[], None] | None = None,
    ) -> None:
        self.message = message
        self.sort_key = sort_key
        self.on_vote = on_vote
        self.transaction_manager = None
        self.aborted = False

    def sortKey(self) -> str:
        return self.sort_key

    def abort(self, txn: Any) -> None:
        self.aborted = True

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        if self.on_vote is not None:
            self.on_vote()
        raise CommitFailed(self.message)

    def tpc_finish(self, txn: Any) -> None:  # pragma: no cover - never reached
        pass

    def tpc_abort(self, txn: Any) -> None:
        self.aborted = True


@implementer(IDataManagerSavepoint)
class _ResourceSavepoint:
    def __init__(self, resource: SavepointResource) -> None:
        self.resource = resource
        self.state = list(resource.pending)

    def rollback(self) -> None:
        self.resource.pending = list(self.state)


@implementer(ISavepointDataManager)
class SavepointResource:
    """An app resource that supports savepoints: items are committed with the transaction.

    It stands in for the app database in the savepoint tests, because zope.sqlalchemy
    refuses savepoints on SQLite sessions (``NO_SAVEPOINT_SUPPORT = {"sqlite"}``).
    """

    def __init__(self) -> None:
        self.transaction_manager = None
        self.pending: list[str] = []
        self.committed: list[str] = []
        self._joined: Any = None

    def add(self, txn: Any, item: str) -> None:
        if self._joined is not txn:
            txn.join(self)
            self._joined = txn
        self.pending.append(item)

    def sortKey(self) -> str:
        return "~app-resource"

    def abort(self, txn: Any) -> None:
        self.pending = []
        self._joined = None

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        pass

    def tpc_finish(self, txn: Any) -> None:
        self.committed.extend(self.pending)
        self.pending = []
        self._joined = None

    def tpc_abort(self, txn: Any) -> None:
        self.pending = []
        self._joined = None

    def savepoint(self) -> _ResourceSavepoint:
        return _ResourceSavepoint(self)

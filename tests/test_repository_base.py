"""The declared extras of the repository contract: which stores offer them, and the error
when one is missing; the pages every store's listings return."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pyramid_pyncette.jobs import Job, RunRecord
from pyramid_pyncette.repository.base import (
    Announcer,
    JobPage,
    RunPage,
    SessionStore,
    session_store,
)
from pyramid_pyncette.repository.memory import MemoryRepository


def test_the_memory_store_neither_writes_through_a_session_nor_announces():
    store = MemoryRepository()
    assert not isinstance(store, SessionStore)
    assert not isinstance(store, Announcer)


def test_the_sql_store_writes_through_a_session_and_can_announce(tmp_path):
    pytest.importorskip("sqlalchemy")
    from pyramid_pyncette.repository.sql import SQLRepository

    store = SQLRepository(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        assert isinstance(store, SessionStore)
        assert isinstance(store, Announcer)
        assert session_store(store) is store
    finally:
        store.close()


def test_the_redis_store_announces_but_cannot_write_through_a_session():
    pytest.importorskip("redis")
    from pyramid_pyncette.repository.redis import RedisRepository

    store = RedisRepository("redis://127.0.0.1:1/0")
    try:
        assert isinstance(store, Announcer)
        assert not isinstance(store, SessionStore)
    finally:
        store.close()


def test_session_store_of_a_store_without_sessions_names_the_fix():
    with pytest.raises(TypeError) as info:
        session_store(MemoryRepository())
    assert str(info.value) == (
        "MemoryRepository cannot write through the app's session: pyncette.session_hook needs "
        "pyncette.url to name the app's SQL database"
    )


def test_complete_and_claim_hands_the_claim_to_the_store_hook_as_one_value():
    from datetime import datetime, timezone

    from pyramid_pyncette.repository.base import Claim

    heard = []

    class OneRoundTrip(MemoryRepository):
        def _complete_then_claim(self, outcomes, claim, runs=()):
            heard.append((tuple(outcomes), claim, tuple(runs)))
            return []

    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    store = OneRoundTrip()
    assert store.complete_and_claim((), now, 7, "tok", 30.0) == []
    assert store.complete_and_claim((), now, 2, "t2", 5.0, frozenset({"q"}), ["run"]) == []
    assert heard == [
        ((), Claim(now=now, limit=7, token="tok", default_lease=30.0), ()),
        (
            (),
            Claim(now=now, limit=2, token="t2", default_lease=5.0, queues=frozenset({"q"})),
            ("run",),
        ),
    ]


def test_the_default_hook_completes_then_claims_with_the_claim_unpacked():
    from datetime import datetime, timezone

    calls = []

    class Recording(MemoryRepository):
        def complete(self, outcomes, runs=()):
            calls.append(("complete", tuple(outcomes), tuple(runs)))

        def claim(self, now, limit, token, default_lease, queues=None):
            calls.append(("claim", now, limit, token, default_lease, queues))
            return []

    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    store = Recording()
    store.complete_and_claim((), now, 3, "a", 60.0)
    store.complete_and_claim(["outcome"], now, 5, "b", 90.0)
    store.complete_and_claim((), now, 1, "c", 60.0, frozenset({"q"}), runs=["run"])
    assert calls == [
        ("claim", now, 3, "a", 60.0, None),
        ("complete", ("outcome",), ()),
        ("claim", now, 5, "b", 90.0, None),
        ("complete", (), ("run",)),
        ("claim", now, 1, "c", 60.0, frozenset({"q"})),
    ]


# --------------------------------------------------------------------------- pages


def _jobs(*ids):
    return [Job(id=ident, task="record", schedule={}) for ident in ids]


def _runs(*ids):
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    return [RunRecord("j", "record", "default", at, at, at, 1, "succeeded", id=i) for i in ids]


def test_a_page_read_one_past_its_limit_names_its_last_job_as_the_next_cursor():
    page = JobPage.read_ahead(_jobs("a", "b", "c"), 2)
    assert [job.id for job in page] == ["a", "b"]
    assert page.next_cursor == "b"


def test_a_page_that_holds_all_that_was_read_has_no_next_cursor():
    jobs = _jobs("a", "b")
    assert JobPage.read_ahead(jobs, 2) == JobPage(jobs, None)
    assert JobPage.read_ahead(jobs, 5) == JobPage(jobs, None)
    assert JobPage.read_ahead([], 2) == JobPage([], None)


def test_a_run_page_read_one_past_its_limit_names_its_last_record_as_the_next_cursor():
    runs = _runs("3", "2", "1")
    page = RunPage.read_ahead(runs, 2)
    assert [run.id for run in page] == ["3", "2"]
    assert page.next_cursor == "2"
    assert RunPage.read_ahead(runs, 3) == RunPage(runs, None)

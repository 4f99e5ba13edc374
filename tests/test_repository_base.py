"""The declared extras of the repository contract: which stores offer them, and the error
when one is missing."""

from __future__ import annotations

import pytest

from pyramid_pyncette.repository.base import Announcer, SessionStore, session_store
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

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

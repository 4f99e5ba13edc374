"""The SQLite store notices when its file is deleted or replaced under it."""

from __future__ import annotations

import logging
import os

import pytest

from pyramid_pyncette.repository.sql import SQLRepository
from pyramid_pyncette.schedules import DateSchedule

pytestmark = pytest.mark.parametrize("store_settings", ["sqlite"], indirect=True)


def _delete_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def _add_from_another_process(app, job_id: str) -> None:
    """Write a due job the way another process would: its own connections to the path."""
    other = SQLRepository(app.repository.engine.url, table_name=app.repository.table.name)
    try:
        other.add([app.scheduler.build_job("record", DateSchedule(app.clock()), job_id=job_id)])
    finally:
        other.close()


def _warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "SQLite file" in record.getMessage()
    ]


def test_jobs_written_to_a_new_file_at_a_deleted_sqlite_path_run(app, caplog):
    repository = app.repository
    repository.sqlite_file_check_interval = 0
    path = repository.engine.url.database
    app.scheduler.add_async_job("record", job_id="before")
    assert app.run_pending() == 1  # the pool now holds a connection to the file

    _delete_database(path)
    _add_from_another_process(app, "after")

    with caplog.at_level(logging.WARNING):
        assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["before", "after"]
    (warning,) = _warnings(caplog)
    assert path in warning and "replaced" in warning
    assert app.scheduler.get_job("after") is None


def test_the_worker_loop_connection_moves_to_a_replacing_sqlite_file(app, caplog):
    repository = app.repository
    repository.sqlite_file_check_interval = 0
    path = repository.engine.url.database
    now = app.clock()
    # The worker loop's claiming call keeps its connection between calls.
    assert repository.complete_and_claim((), now, 10, "first", 60) == []

    _delete_database(path)
    _add_from_another_process(app, "after")

    with caplog.at_level(logging.WARNING):
        leases = repository.complete_and_claim((), now, 10, "second", 60)
    assert [lease.job.id for lease in leases] == ["after"]
    assert len(_warnings(caplog)) == 1
    repository.release_thread_connection()


def test_a_recreated_sqlite_file_gets_its_table_back(app, caplog):
    repository = app.repository
    repository.sqlite_file_check_interval = 0
    path = repository.engine.url.database
    assert app.run_pending() == 0

    _delete_database(path)

    with caplog.at_level(logging.WARNING):
        app.scheduler.add_async_job("record", job_id="fresh")
        assert app.run_pending() == 1
    assert os.path.exists(path)
    assert [call.job_id for call in app.calls] == ["fresh"]
    assert len(_warnings(caplog)) == 1


def test_the_sqlite_file_is_checked_at_most_once_per_interval(app, monkeypatch):
    repository = app.repository
    assert repository.sqlite_file_check_interval == pytest.approx(2.0)
    app.scheduler.add_async_job("record", job_id="before")
    assert app.run_pending() == 1
    stats = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        if str(path) == repository.engine.url.database:
            stats.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    for _ in range(20):
        app.run_pending()
    assert len(stats) <= 1

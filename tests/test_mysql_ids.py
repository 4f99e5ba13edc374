"""MariaDB / MySQL: job ids are compared byte for byte, whatever the database's defaults.

Each test runs the store in a database created with loose defaults (latin1,
or a case- and accent-insensitive utf8mb4 collation), the way many servers
are configured, instead of relying on how the test server was started.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

#: Database defaults to run the store in: (character set, collation).
LOOSE_DATABASES = {
    "latin1": ("latin1", "latin1_swedish_ci"),
    "utf8mb4-ci": ("utf8mb4", "utf8mb4_unicode_ci"),
}

#: Ids that a case-, accent- or padding-insensitive comparison merges.
IDS = [
    "plain",
    "Plain",
    "PLAIN",
    "e",
    "é",
    "E",
    "É",
    "a",
    "a ",
    "ss",
    "ß",
    "日本",
    "にほん",
    "🙂",
    "😀",
]


@pytest.fixture(params=list(LOOSE_DATABASES))
def store_settings(request, mariadb_server):
    """A MariaDB store in a fresh database whose defaults are ``request.param``'s."""
    charset, collation = LOOSE_DATABASES[request.param]
    mariadb_server.start()
    url = mariadb_server.create_database(charset=charset, collation=collation)
    name = url.rsplit("/", 1)[1]
    conn = mariadb_server.connect(name)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@character_set_database, @@collation_database")
            assert cursor.fetchone() == (charset, collation)
    finally:
        conn.close()
    yield {"pyncette.url": url}
    mariadb_server.drop_database(name)


def test_job_ids_differing_in_case_accents_or_padding_are_distinct_jobs(app):
    due = app.start + timedelta(seconds=60)
    for number, job_id in enumerate(IDS):
        app.scheduler.add_date_job("record", due, args=[number], job_id=job_id)

    assert {job.id: job.args for job in app.scheduler.get_jobs()} == {
        job_id: [number] for number, job_id in enumerate(IDS)
    }
    for number, job_id in enumerate(IDS):
        job = app.scheduler.get_job(job_id)
        assert (job.id, job.args) == (job_id, [number])

    assert app.run_pending(due) == len(IDS)
    assert sorted((call.job_id, call.args) for call in app.calls) == sorted(
        (job_id, (number,)) for number, job_id in enumerate(IDS)
    )
    assert list(app.scheduler.get_jobs()) == []


def test_cancelling_a_job_id_leaves_ids_that_differ_only_in_case(app):
    for job_id in ("plain", "Plain", "PLAIN"):
        app.scheduler.add_date_job("record", app.start + timedelta(hours=1), job_id=job_id)

    assert app.scheduler.cancel_job("Plain") is True
    assert app.scheduler.cancel_job("Plain") is False
    assert sorted(job.id for job in app.scheduler.get_jobs()) == ["PLAIN", "plain"]


def test_the_table_is_binary_utf8mb4_and_holds_large_arguments(app, mariadb_server):
    # 100,000 characters, 350,000 bytes of JSON: far over MySQL's TEXT (64 KiB).
    big = "x€" * 50_000
    app.scheduler.add_date_job("record", app.start, args=[big], job_id="big")

    assert app.scheduler.get_job("big").args == [big]
    assert app.run_pending() == 1
    assert app.calls[0].args == (big,)

    conn = mariadb_server.connect(app.repository.engine.url.database)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = %s",
                (app.repository.table.name,),
            )
            columns = {name: rest for name, *rest in cursor.fetchall()}
    finally:
        conn.close()
    assert columns["id"] == ["varchar", "utf8mb4", "utf8mb4_nopad_bin"]
    assert columns["task"][1:] == ["utf8mb4", "utf8mb4_nopad_bin"]
    for name in ("schedule", "args", "options", "last_error"):
        assert columns[name][0] == "mediumtext", name


def test_an_existing_table_with_a_loose_collation_is_reported(app, mariadb_server, caplog):
    from pyramid_pyncette.repository.sql import SQLRepository

    name = app.repository.table.name
    conn = mariadb_server.connect(app.repository.engine.url.database)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4")
    finally:
        conn.close()

    repository = SQLRepository(app.repository.engine.url, table_name=name)
    try:
        with caplog.at_level("WARNING", logger="pyramid_pyncette.repository.sql"):
            repository.setup()
    finally:
        repository.close()
    (record,) = [r for r in caplog.records if "compares job ids" in r.getMessage()]
    assert "ALTER TABLE" in record.getMessage()

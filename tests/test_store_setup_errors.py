"""A misconfigured store stops ``pscheduler`` at start; an unreachable one does not.

Permanent problems (wrong credentials, an unknown database, a missing table
with ``pyncette.skip_table_create``, a missing driver) exit with status 2
and one line naming the problem and the fix, in every mode (the daemon,
``--once`` and ``--list``). A store that cannot be reached is an outage:
``--once`` and ``--list`` exit 3, the daemon waits for it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from pyramid.exceptions import ConfigurationError

from tests.conftest import include_pyncette
from tests.daemon import PSCHEDULER, process_env, run_pscheduler, write_ini
from tests.servers import free_port

MODES = [["--once"], ["--list"], []]  # [] is the daemon
MODE_IDS = ["once", "list", "daemon"]


def _pscheduler(ini, *args, env=None, timeout=60):
    done = subprocess.run(
        [*PSCHEDULER, *args, ini],
        env=env or process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def _assert_stops_with_one_line(ini, *needles, env=None):
    """Every mode exits 2 with one ``pscheduler:`` line holding every needle."""
    for args in MODES:
        status, out, err = _pscheduler(ini, *args, env=env)
        assert status == 2, (args, out, err)
        lines = [line for line in err.splitlines() if line.startswith("pscheduler:")]
        assert len(lines) == 1, (args, err)
        for needle in needles:
            assert needle in lines[0], (args, lines[0])
        assert "Traceback" not in err
        assert "retrying" not in err


def _with_credentials(url, user, password):
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.rpartition('@')[2]}"


def _with_database(url, database):
    return f"{url.rpartition('/')[0]}/{database}"


# --------------------------------------------------------------------------- classification


@pytest.mark.slow
def test_sqlite_missing_table_with_skip_table_create_stops_every_mode(tmp_path):
    ini, _ = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.skip_table_create = true"
    )
    _assert_stops_with_one_line(
        ini, "'pyncette_jobs' table does not exist", "pyncette.skip_table_create = false"
    )


def test_a_missing_sqlite_directory_is_still_an_outage(tmp_path, capsys):
    # It may be a volume not mounted yet: --once fails with 3, not 2.
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/missing-dir/jobs.sqlite")
    assert run_pscheduler("--once", ini) == 3
    assert "cannot reach the store" in capsys.readouterr().err


def test_redis_store_tells_permanent_errors_from_outages():
    redis = pytest.importorskip("redis")
    from pyramid_pyncette.repository.redis import RedisRepository

    errors = redis.exceptions
    store = RedisRepository("redis://127.0.0.1:1/0", namespace="x")
    try:
        for exc in (
            errors.AuthenticationError("invalid username-password pair or user is disabled."),
            errors.AuthenticationError("Authentication required."),
            errors.AuthenticationWrongNumberOfArgsError("wrong number of arguments for 'auth'"),
            errors.ResponseError("DB index is out of range"),
            errors.AuthorizationError("NOPERM this user has no permissions"),
        ):
            assert store.describe_setup_error(exc) is not None, exc
            assert not store.is_transient(exc), exc
        for exc in (
            errors.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            errors.TimeoutError("Timeout connecting to server"),
            errors.BusyLoadingError("Redis is loading the dataset in memory"),
        ):
            assert store.describe_setup_error(exc) is None, exc
            assert store.is_transient(exc), exc
    finally:
        store.close()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def password_role(postgresql_server):
    """A role that logs in with the password 'right' on the otherwise trusting server."""
    role = "pwcheck"
    with postgresql_server.connect("postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
        conn.execute(f'GRANT ALL ON DATABASE "{postgresql_server.database}" TO {role}')
    with postgresql_server.connect(autocommit=True) as conn:
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    hba = postgresql_server.data_dir / "pg_hba.conf"
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    if line not in hba.read_text():
        hba.write_text(line + hba.read_text())  # first match wins
    with postgresql_server.connect("postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    # The reload is asynchronous: wait until a wrong password is refused.
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(
                host=postgresql_server.host,
                port=postgresql_server.port,
                user=role,
                password="wrong",
                dbname="postgres",
                connect_timeout=5,
            ).close()
        except psycopg.OperationalError:
            break
        assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
        time.sleep(0.1)
    return role


@pytest.mark.slow
def test_postgresql_wrong_password_stops_pscheduler(tmp_path, postgresql_server, password_role):
    url = _with_credentials(postgresql_server.url, password_role, "wrong")
    ini, _ = write_ini(tmp_path, url)
    _assert_stops_with_one_line(
        ini,
        "fix the user and password in pyncette.url",
        f'password authentication failed for user "{password_role}"',
        f"{password_role}:***@",
    )
    # The right password works, through the same checks.
    ini, _ = write_ini(tmp_path, _with_credentials(postgresql_server.url, password_role, "right"))
    status, _, err = _pscheduler(ini, "--once")
    assert status == 0, err


@pytest.mark.slow
def test_postgresql_unknown_role_or_database_stops_pscheduler(tmp_path, postgresql_server):
    ini, _ = write_ini(tmp_path, _with_credentials(postgresql_server.url, "nobody", "pw"))
    _assert_stops_with_one_line(ini, 'role "nobody" does not exist', "nobody:***@")

    ini, _ = write_ini(tmp_path, _with_database(postgresql_server.url, "no_such_db"))
    _assert_stops_with_one_line(
        ini, "the database does not exist; create it", 'database "no_such_db" does not exist'
    )


@pytest.mark.slow
def test_postgresql_missing_table_with_skip_table_create_stops_pscheduler(
    tmp_path, postgresql_server
):
    ini, _ = write_ini(
        tmp_path,
        postgresql_server.url,
        extra="pyncette.table_name = never_created\npyncette.skip_table_create = true",
    )
    _assert_stops_with_one_line(
        ini, "'never_created' table does not exist", "pyncette.skip_table_create = false"
    )


# --------------------------------------------------------------------------- MariaDB


@pytest.mark.slow
def test_mariadb_wrong_password_unknown_database_and_missing_table_stop_pscheduler(
    tmp_path, mariadb_server
):
    conn = mariadb_server.connect("", autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute("CREATE USER IF NOT EXISTS 'pwcheck'@'%' IDENTIFIED BY 'right'")
    finally:
        conn.close()
    ini, _ = write_ini(tmp_path, _with_credentials(mariadb_server.url, "pwcheck", "wrong"))
    _assert_stops_with_one_line(ini, "fix the user and password", "1045", "pwcheck:***@")

    ini, _ = write_ini(tmp_path, _with_database(mariadb_server.url, "no_such_db"))
    _assert_stops_with_one_line(ini, "the database does not exist", "1049")

    ini, _ = write_ini(
        tmp_path,
        mariadb_server.url,
        extra="pyncette.table_name = never_created\npyncette.skip_table_create = true",
    )
    _assert_stops_with_one_line(ini, "'never_created' table does not exist", "1146")


# --------------------------------------------------------------------------- Redis


@pytest.mark.slow
def test_redis_wrong_password_and_unknown_database_stop_pscheduler(tmp_path, redis_server):
    with redis_server.client() as client:
        client.execute_command("ACL", "SETUSER", "pwcheck", "on", ">right", "~*", "&*", "+@all")
    ini, _ = write_ini(tmp_path, _with_credentials(redis_server.url, "pwcheck", "wrong"))
    _assert_stops_with_one_line(ini, "fix the user and password", "pwcheck:***@")

    ini, _ = write_ini(tmp_path, _with_database(redis_server.url, "99"))
    _assert_stops_with_one_line(ini, "no such database number", "DB index is out of range")


@pytest.mark.slow
def test_redis_without_the_password_it_requires_stops_pscheduler(
    tmp_path, redis_requiring_a_password
):
    ini, _ = write_ini(tmp_path, redis_requiring_a_password.url)  # NOAUTH
    _assert_stops_with_one_line(ini, "fix the user and password")


# --------------------------------------------------------------------------- outages


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql", "redis"])
def test_a_refused_port_is_an_outage_not_a_misconfiguration(tmp_path, scheme):
    url = f"{scheme}://app:pw@127.0.0.1:{free_port()}/jobs"
    if scheme == "redis":
        url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    ini, _ = write_ini(tmp_path, url)
    for args in (["--once"], ["--list"]):
        status, _, err = _pscheduler(ini, *args)
        assert status == 3, (args, err)

    # The daemon starts and waits for the store.
    log = tmp_path / "daemon.log"
    with open(log, "w") as stderr:
        daemon = subprocess.Popen([*PSCHEDULER, ini], env=process_env(), stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while "store unavailable" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0, log.read_text()


# --------------------------------------------------------------------------- drivers

DRIVERS = [
    ("psycopg", "postgresql+psycopg://app:pw@db.example/jobs", "postgresql"),
    ("pymysql", "mysql+pymysql://app:pw@db.example/jobs", "mysql"),
    ("redis", "redis://:pw@cache.example:6379/0", "redis"),
]


@pytest.mark.parametrize(("module", "url", "extra"), DRIVERS, ids=[d[0] for d in DRIVERS])
def test_a_missing_driver_names_the_extra_to_install(monkeypatch, module, url, extra):
    monkeypatch.setitem(sys.modules, module, None)  # the import fails
    # A store module imported earlier would hide the missing driver.
    monkeypatch.delitem(sys.modules, "pyramid_pyncette.repository.redis", raising=False)
    message = _include_error(url)
    assert f'pip install "pyramid_pyncette[{extra}]"' in message
    assert "pw" not in message.replace("pyramid_pyncette", "")


def _include_error(url):
    with pytest.raises(ConfigurationError) as raised:
        include_pyncette({"pyncette.url": url})
    return str(raised.value)


def test_a_missing_default_driver_suggests_the_extra_and_its_url(monkeypatch):
    # mysql:// means MySQLdb (mysqlclient) to SQLAlchemy; the extra installs PyMySQL.
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    message = _include_error("mysql://app@db.example/jobs")
    assert 'pip install "pyramid_pyncette[mysql]"' in message
    assert "mysql+pymysql://" in message
    assert "pip install mysqlclient" in message
    # postgresql:// means psycopg2 to SQLAlchemy 2.0 and psycopg to 2.1.
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    message = _include_error("postgresql://app@db.example/jobs")
    assert 'pip install "pyramid_pyncette[postgresql]"' in message


@pytest.mark.slow
@pytest.mark.parametrize(("module", "url", "extra"), DRIVERS, ids=[d[0] for d in DRIVERS])
def test_pscheduler_without_the_driver_stops_and_names_the_extra(tmp_path, module, url, extra):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    env = process_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    ini, _ = write_ini(tmp_path, url)
    _assert_stops_with_one_line(ini, f'pip install "pyramid_pyncette[{extra}]"', env=env)


@pytest.mark.slow
def test_sqlite_table_of_an_older_version_with_skip_table_create_stops_every_mode(tmp_path):
    import sqlalchemy as sa

    from pyramid_pyncette.repository.sql import make_table

    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    current = make_table("pyncette_jobs", sa.MetaData())
    old = sa.Table(
        "pyncette_jobs",
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key)
            for c in current.c
            if c.name != "queue"
        ),
    )
    engine = sa.create_engine(url)
    old.create(engine)
    engine.dispose()
    ini, _ = write_ini(tmp_path, url, extra="pyncette.skip_table_create = true")
    _assert_stops_with_one_line(
        ini,
        "'pyncette_jobs' table was made by an older version",
        "ALTER TABLE pyncette_jobs ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default'",
        "pyncette.skip_table_create = false",
    )

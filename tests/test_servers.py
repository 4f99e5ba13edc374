"""The real-server fixtures of :mod:`tests.servers` give working, restartable servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests import servers

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sql_roundtrip(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar_one()
    finally:
        engine.dispose()


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- PostgreSQL


def test_postgresql_server_answers(postgresql_server):
    server = postgresql_server
    assert server.running and server.pid
    assert server.host == "127.0.0.1"
    assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/pyncette_test"
    with server.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _sql_roundtrip(server.url) == 1


def test_postgresql_create_database_gives_an_empty_database(postgresql_server):
    url = postgresql_server.create_database()
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    with pytest.raises(ValueError):
        postgresql_server.create_database("bad name; DROP")


def test_postgresql_restart_keeps_port_and_data(postgresql_server):
    server = postgresql_server
    database = f"restart_{os.getpid()}"
    server.create_database(database)
    with server.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    port, pid = server.port, server.pid
    try:
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != pid
        with server.connect(database) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("still here",)]
    finally:
        server.start()
        server.drop_database(database)


def test_postgresql_stop_then_start(postgresql_server):
    server = postgresql_server
    try:
        server.stop()
        assert not server.running and server.pid is None
        with pytest.raises(psycopg.OperationalError), server.connect(connect_timeout=1):
            pass
    finally:
        server.start()
    assert _sql_roundtrip(server.url) == 1


# --------------------------------------------------------------------------- MariaDB


def test_mariadb_server_answers(mariadb_server):
    server = mariadb_server
    assert server.running and server.pid
    assert server.url == f"mysql+pymysql://root@127.0.0.1:{server.port}/pyncette_test"
    assert _sql_roundtrip(server.url) == 1


def test_mariadb_create_database_gives_an_empty_database(mariadb_server):
    url = mariadb_server.create_database()
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_mariadb_restart_keeps_port_and_data(mariadb_server):
    server = mariadb_server
    database = f"restart_{os.getpid()}"
    server.create_database(database)
    conn = server.connect(database, autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE kept (value VARCHAR(20))")
        cursor.execute("INSERT INTO kept VALUES ('still here')")
    conn.close()
    port, pid = server.port, server.pid
    try:
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != pid
        conn = server.connect(database)
        with conn.cursor() as cursor:
            cursor.execute("SELECT value FROM kept")
            assert cursor.fetchall() == (("still here",),)
        conn.close()
    finally:
        server.start()
        server.drop_database(database)


# --------------------------------------------------------------------------- Redis


def test_redis_server_answers_and_flushes(redis_server):
    server = redis_server
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with server.client() as client:
        assert client.ping() is True
        client.set("key", "value")
        server.flushall()
        assert client.get("key") is None


def test_redis_restart_keeps_port_and_data(redis_server):
    server = redis_server
    with server.client() as client:
        client.set("kept", "still here")
    port, pid = server.port, server.pid
    try:
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != pid
        with server.client() as client:
            assert client.get("kept") == b"still here"
    finally:
        server.start()
        server.flushall()


# --------------------------------------------------------------------------- Redis Cluster


def _key_on(cluster, index):
    """A key whose slot node ``index`` of ``cluster`` serves."""
    from redis.crc import key_slot

    for n in range(10_000):
        key = f"probe-{n}"
        if cluster.node_of_slot(key_slot(key.encode())) == index:
            return key
    raise AssertionError(f"no key found for node {index}")


def _node_id(node):
    with node.client() as client:
        return client.execute_command("CLUSTER", "MYID")


def test_free_cluster_port_leaves_room_for_the_cluster_bus():
    port = servers.free_cluster_port()
    assert port + servers.CLUSTER_BUS_OFFSET <= 65535
    for candidate in (port, port + servers.CLUSTER_BUS_OFFSET):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", candidate))  # both are free


def test_redis_cluster_has_three_masters_sharing_every_slot(redis_cluster_server):
    cluster = redis_cluster_server
    assert len(cluster.nodes) == 3
    assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}"
    assert len({node.port for node in cluster.nodes}) == 3
    for node in cluster.nodes:
        assert node.running and node.host == "127.0.0.1"
        with node.client() as client:
            assert client.execute_command("ROLE")[0] in (b"master", "master")
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"  # masters serving slots
        assert info["cluster_slots_assigned"] == "16384"

    ranges = cluster.slot_ranges()
    assert sorted(ranges) == [0, 1, 2]
    assert all(ranges[index] for index in ranges), f"a master serves no slot: {ranges}"
    covered = sorted(
        slot for spans in ranges.values() for a, b in spans for slot in range(a, b + 1)
    )
    assert covered == list(range(servers.CLUSTER_SLOTS))  # each slot once, none missing

    with cluster.client() as client:
        keys = [_key_on(cluster, index) for index in range(3)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        client.delete(*keys)


def test_redis_cluster_node_restart_rejoins_with_its_slots_and_keys(redis_cluster_server):
    cluster = redis_cluster_server
    ranges, node_id = cluster.slot_ranges(), _node_id(cluster.nodes[1])
    kept, elsewhere = _key_on(cluster, 1), _key_on(cluster, 0)
    with cluster.client() as client:
        client.set(kept, "still here")
    port, pid = cluster.nodes[1].port, cluster.nodes[1].pid
    try:
        cluster.stop_node(1)
        assert not cluster.nodes[1].running
        # The other masters keep serving their own slots.
        with cluster.client() as client:
            client.set(elsewhere, "served")
            assert client.get(elsewhere) == b"served"
            client.delete(elsewhere)
        cluster.start_node(1)
        assert (cluster.nodes[1].port, cluster.nodes[1].running) == (port, True)
        assert cluster.nodes[1].pid != pid
        assert _node_id(cluster.nodes[1]) == node_id
        assert cluster.slot_ranges() == ranges
        for node in cluster.nodes:
            info = node.cluster_info()
            assert (info["cluster_state"], info["cluster_slots_ok"]) == ("ok", "16384")
        with cluster.client() as client:
            assert client.get(kept) == b"still here"
            client.delete(kept)
    finally:
        cluster.start()


@pytest.fixture
def missing_redis_cli_project(tmp_path: Path) -> Path:
    """A test project whose ``redis_cluster_server`` fixture finds no ``redis-cli``."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import tests.servers

            tests.servers._find_redis_cli = lambda: None
            pytest_plugins = ["tests.servers"]
            """
        )
    )
    (tmp_path / "test_needs_cluster.py").write_text(
        "def test_it(redis_cluster_server):\n    pass\n"
    )
    return tmp_path


@pytest.mark.parametrize(("args", "returncode"), [([], 0), (["--require-backends"], 1)])
def test_missing_redis_cli_skips_the_cluster_unless_required(
    missing_redis_cli_project, args, returncode
):
    result = _run_pytest(missing_redis_cli_project, *args)
    assert result.returncode == returncode, result.stdout + result.stderr
    assert ("1 skipped" in result.stdout) is (returncode == 0)
    assert "'redis-cli'" in result.stdout
    assert "apt-get install redis-tools" in result.stdout


# --------------------------------------------------------------------------- skip or fail


@pytest.mark.parametrize(
    ("option", "env", "required"),
    [
        (False, None, False),
        (True, None, True),
        (False, "1", True),
        (False, "true", True),
        (False, "0", False),
        (False, "", False),
        (True, "0", True),
    ],
)
def test_backends_required_from_option_or_env(option, env, required):
    environ = {} if env is None else {servers.REQUIRE_BACKENDS_ENV: env}
    assert servers.backends_required(option, environ) is required


def test_missing_backend_skips_unless_required():
    reason = str(servers.BackendUnavailable("Redis", "redis-server", "redis-server"))
    assert "redis-server" in reason and "apt-get install redis-server" in reason
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        servers.handle_unavailable(reason, required=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        servers.handle_unavailable(reason, required=True)


@pytest.fixture
def missing_redis_project(tmp_path: Path) -> Path:
    """A test project whose ``redis_server`` fixture finds no binary."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import tests.servers

            tests.servers._find_redis_server = lambda: None
            pytest_plugins = ["tests.servers"]
            """
        )
    )
    (tmp_path / "test_needs_redis.py").write_text("def test_it(redis_server):\n    pass\n")
    return tmp_path


def _run_pytest(project: Path, *args: str, env: dict[str, str] | None = None):
    environ = {
        key: value for key, value in os.environ.items() if key != servers.REQUIRE_BACKENDS_ENV
    }
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_binary_is_a_loud_skip(missing_redis_project):
    result = _run_pytest(missing_redis_project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "apt-get install redis-server" in result.stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--require-backends"], None), ([], {servers.REQUIRE_BACKENDS_ENV: "1"})],
    ids=["option", "env"],
)
def test_missing_binary_fails_when_backends_are_required(missing_redis_project, args, env):
    result = _run_pytest(missing_redis_project, *args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped" not in result.stdout
    assert "apt-get install redis-server" in result.stdout


# --------------------------------------------------------------------------- cleanup


def _run_script(body: str) -> list[str]:
    script = textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_servers_left_open_are_stopped_and_removed_at_exit():
    pid, base_dir = _run_script(
        """
        from tests.servers import start_redis

        server = start_redis()
        print(server.pid, server.base_dir)
        """
    )
    assert _wait_gone(int(pid))
    assert not Path(base_dir).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses PR_SET_PDEATHSIG")
def test_servers_die_with_a_killed_parent():
    pid, base_dir = _run_script(
        """
        import os, sys
        from tests.servers import start_redis

        server = start_redis()
        print(server.pid, server.base_dir, flush=True)
        os._exit(0)  # no atexit handlers, as when killed
        """
    )
    gone = _wait_gone(int(pid))
    if not gone:
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(base_dir, ignore_errors=True)
    assert gone

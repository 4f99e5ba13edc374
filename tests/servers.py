"""Real PostgreSQL, MariaDB, Redis and Redis Cluster servers for tests and benchmarks.

As a pytest plugin (``pytest_plugins = ["tests.servers"]`` in ``tests/conftest.py``)
this module provides four session-scoped fixtures, each started lazily the
first time a test asks for it and stopped when the session ends:

* ``postgresql_server`` -> :class:`PostgreSQLServer`
* ``mariadb_server`` -> :class:`MariaDBServer`
* ``redis_server`` -> :class:`RedisServer`
* ``redis_cluster_server`` -> :class:`RedisClusterServer` (three masters)

Every server listens on 127.0.0.1 only, on a free port, with its data in a
fresh temporary directory that is removed when it is closed. Settings favour
speed over durability (no fsync, no binary log, no persistence).

When a server's binary is not installed the fixture skips the test with a
reason naming the binary and the package to install. ``--require-backends``
(or ``PYNCETTE_REQUIRE_BACKENDS=1``) turns those skips into failures, so CI
cannot pass while silently testing nothing.

Outside pytest (benchmarks, scripts), use the same servers directly::

    from tests.servers import start_postgresql

    with start_postgresql() as pg:
        url = pg.create_database("bench")
        ...

When running as root the servers run as an unprivileged account (PostgreSQL
refuses root): the package's own account (``postgres``, ``mysql``,
``redis``) when it exists, else ``nobody``; ``PYNCETTE_SERVER_USER`` overrides.
Servers are stopped by pid: at session end, from an ``atexit`` handler if the
session is interrupted, and (on Linux) by the kernel if this process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import pytest

__all__ = [
    "REQUIRE_BACKENDS_ENV",
    "BackendUnavailable",
    "MariaDBServer",
    "PostgreSQLServer",
    "RedisClusterNode",
    "RedisClusterServer",
    "RedisServer",
    "Server",
    "ServerError",
    "backends_required",
    "free_cluster_port",
    "free_port",
    "handle_unavailable",
    "start_mariadb",
    "start_postgresql",
    "start_redis",
    "start_redis_cluster",
]

HOST = "127.0.0.1"

#: Environment variable that, when truthy, makes a missing backend a failure.
REQUIRE_BACKENDS_ENV = "PYNCETTE_REQUIRE_BACKENDS"
#: Environment variable naming the account servers run as when we are root.
SERVER_USER_ENV = "PYNCETTE_SERVER_USER"

#: Seconds a server may take to accept connections after being launched.
START_TIMEOUT = 60.0
#: Seconds a server may take to exit after its stop signal before it is killed.
STOP_TIMEOUT = 30.0

_TRUTHY = {"1", "true", "yes", "on", "y", "t"}
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DIR_PREFIX = "pyncette-"
_OWNER_FILE = "owner.json"


class BackendUnavailable(RuntimeError):
    """A server binary is not installed on this machine."""

    def __init__(self, backend: str, binary: str, package: str) -> None:
        self.backend = backend
        self.binary = binary
        self.package = package
        super().__init__(
            f"BACKEND NOT INSTALLED: {backend} tests need the {binary!r} binary, which was not "
            f"found on PATH or in the usual install locations. Install it with "
            f"`apt-get install {package}` (Debian/Ubuntu). Pass --require-backends or set "
            f"{REQUIRE_BACKENDS_ENV}=1 to make this a failure instead of a skip."
        )


class ServerError(RuntimeError):
    """A server could not be initialised, started or stopped."""


# --------------------------------------------------------------------------- skip or fail


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUTHY


def backends_required(option: bool = False, environ: Any = None) -> bool:
    """Whether a missing backend must fail (``--require-backends`` or the env var)."""
    environ = os.environ if environ is None else environ
    return bool(option) or _truthy(environ.get(REQUIRE_BACKENDS_ENV))


def handle_unavailable(reason: str, *, required: bool) -> NoReturn:
    """Skip the current test for ``reason``, or fail it when backends are ``required``."""
    if required:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _find_binary(names: Sequence[str], extra_dirs: Sequence[str] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for directory in extra_dirs:
        for name in names:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def _postgresql_bin_dirs() -> list[str]:
    def version(path: str) -> tuple[int, ...]:
        digits = re.findall(r"\d+", path)
        return tuple(int(d) for d in digits)

    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    return [*versioned, "/usr/local/pgsql/bin", "/usr/pgsql/bin"]


def _find_postgres() -> str | None:
    return _find_binary(["postgres"], _postgresql_bin_dirs())


def _find_mariadbd() -> str | None:
    dirs = ["/usr/sbin", "/usr/libexec", "/usr/local/mysql/bin", "/usr/local/sbin"]
    return _find_binary(["mariadbd", "mysqld"], dirs)


def _find_redis_server() -> str | None:
    return _find_binary(["redis-server"], ["/usr/bin", "/usr/local/bin"])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _Account:
    """Who a server process runs as (``None`` fields: whoever we are)."""

    name: str
    uid: int | None
    gid: int | None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)


def _service_account(preferred: Sequence[str]) -> _Account:
    if os.geteuid() != 0:
        return _Account(pwd.getpwuid(os.geteuid()).pw_name, None, None)
    override = os.environ.get(SERVER_USER_ENV)
    names = [override] if override else [*preferred, "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return _Account(name, entry.pw_uid, entry.pw_gid)
    raise ServerError(
        f"running as root and none of the accounts {names} exists (or they are root): "
        f"create an unprivileged user and set {SERVER_USER_ENV} to its name"
    )


def _reachable_by(path: Path, account: _Account) -> bool:
    """Whether ``account`` can traverse every directory down to ``path``."""
    if account.uid is None:
        return True
    for directory in [path, *path.parents]:
        mode = os.stat(directory).st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


_LIBC: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel send ``sig`` to the child when we die.

    Only used from the main thread: the kernel ties the signal to the thread
    that forked, and a worker thread ending must not stop a server.
    """
    if _LIBC is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    libc = _LIBC

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # we died before the signal was armed
            os._exit(1)

    return preexec


# --------------------------------------------------------------------------- live servers

_LIVE: set[Server] = set()
_LIVE_LOCK = threading.Lock()


def _close_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_close_all)


def _sweep_stale(parent: Path) -> None:
    """Remove server directories left behind by runs that were killed outright."""
    for directory in parent.glob(f"{_DIR_PREFIX}*"):
        owner_file = directory / _OWNER_FILE
        try:
            if directory.is_symlink() or not directory.is_dir():
                continue
            info = json.loads(owner_file.read_text())
            if os.stat(owner_file).st_uid != os.geteuid():
                continue
            pids = [int(info["owner"]), *(int(p) for p in info.get("servers", []))]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not any(_pid_alive(pid) for pid in pids):
            shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- servers


class Server:
    """One server process with its own data directory.

    ``start()`` initialises the data directory the first time, launches the
    server and waits until it accepts connections; ``stop()`` stops it by
    pid; ``restart()`` does both, keeping the port and the data directory;
    ``close()`` stops it for good and removes the directory. ``start()`` is a
    no-op while the server runs.
    """

    #: Name used in messages and directory names.
    kind: ClassVar[str] = "server"
    #: Signal asking the server for a clean, prompt shutdown.
    stop_signal: ClassVar[int] = signal.SIGTERM
    #: Accounts to run as when we are root, in order of preference.
    accounts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, parent: str | os.PathLike[str] | None = None, port: int | None = None):
        self.host = HOST
        self._auto_port = port is None
        self.port = self._pick_port() if port is None else port
        self.account = _service_account(self.accounts)
        parent_dir = Path(parent if parent is not None else tempfile.gettempdir()).resolve()
        if not _reachable_by(parent_dir, self.account):
            if parent is not None:
                raise ServerError(
                    f"{parent_dir} is not reachable by the account {self.account.name!r} the "
                    f"{self.kind} server runs as; pick a directory every user can traverse"
                )
            parent_dir = Path("/tmp")
        _sweep_stale(parent_dir)
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{self.kind}-", dir=parent_dir))
        self.account.chown(self.base_dir)
        self.log_path = self.base_dir / f"{self.kind}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.initialized = False
        self.closed = False
        self.startup_seconds: float | None = None
        self.data_dir = self.base_dir
        self._server_pids: list[int] = []
        self._write_owner()
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- to implement ------------------------------------------------------

    def _pick_port(self) -> int:
        """A free port to listen on (the first one, or after a start lost a race for it)."""
        return free_port()

    def _initialize(self) -> None:
        """Create the data directory (runs once, before the first start)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> None:
        """Raise unless the server accepts connections and answers a query."""
        raise NotImplementedError

    def _after_first_start(self) -> None:
        """One-time setup once the server first answers (create databases...)."""

    # -- public -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else ``None``."""
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        """Start the server (if it is not running) and wait until it answers."""
        if self.closed:
            raise ServerError(f"{self.kind} server at {self.base_dir} was closed")
        if self.running:
            return self
        began = time.monotonic()
        if not self.initialized:
            self._initialize()
            self.initialized = True
        attempts = 3 if self._auto_port and self.startup_seconds is None else 1
        for attempt in range(1, attempts + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch()
                self._wait_ready(timeout)
                break
            except ServerError:
                new_log = self._log_since(offset)
                if attempt < attempts and "in use" in new_log.lower():
                    self.port = self._pick_port()
                    continue
                raise
        if self.startup_seconds is None:
            self._after_first_start()
            self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server by pid: its stop signal, a wait, then SIGKILL if needed."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._reap_group(process)
        self.process = None

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self._kill_group(process)
        self._reap_group(process)
        self.process = None

    def restart(self, timeout: float = START_TIMEOUT) -> Server:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        if self.closed:
            return
        try:
            self.stop()
        finally:
            self.closed = True
            with _LIVE_LOCK:
                _LIVE.discard(self)
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        return _tail(self.log_path, lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.base_dir}>"

    # -- plumbing -----------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PG", "MYSQL", "MARIADB", "REDIS"))
        }
        env.update(HOME=str(self.base_dir), LC_ALL="C", LANG="C")
        return env

    def _run_setup(self, command: list[str], log_name: str, timeout: float = 300) -> None:
        """Run a one-off initialisation command as the server account."""
        log_path = self.base_dir / log_name
        with open(log_path, "ab") as log:
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                    env=self._environment(),
                    timeout=timeout,
                    check=False,
                    **self.account.popen_kwargs(),
                )
            except subprocess.TimeoutExpired as exc:
                raise ServerError(
                    f"{self.kind}: {command[0]} did not finish in {timeout:g}s; "
                    f"log {log_path}:\n{_tail(log_path)}"
                ) from exc
        if result.returncode != 0:
            raise ServerError(
                f"{self.kind}: {' '.join(command)} exited with code {result.returncode}; "
                f"log {log_path}:\n{_tail(log_path)}"
            )

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent(self.stop_signal),
                **self.account.popen_kwargs(),
            )
        self._server_pids.append(self.process.pid)
        self._write_owner()

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        last_error: BaseException | None = None
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise ServerError(
                    f"{self.kind} server exited with code {code} while starting on "
                    f"{self.host}:{self.port}; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self._probe()
                return
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.kind} server did not accept connections on {self.host}:{self.port} "
                    f"within {timeout:g}s (last error: {last_error!r}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _check_data_dir(self, reported: str) -> None:
        """Make sure the server that answered is ours, not another one on the same port."""
        if os.path.realpath(reported.rstrip("/")) != os.path.realpath(self.data_dir):
            raise ServerError(f"another server answers on port {self.port} (data in {reported})")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # The server leads its own session: its group holds it and its workers only.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait(STOP_TIMEOUT)

    @staticmethod
    def _reap_group(process: subprocess.Popen[bytes]) -> None:
        """Wait briefly for workers the server forked to exit after it did."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _write_owner(self) -> None:
        info = {"owner": os.getpid(), "servers": self._server_pids[-5:]}
        (self.base_dir / _OWNER_FILE).write_text(json.dumps(info))


def _check_identifier(name: str) -> str:
    if not _IDENTIFIER_RE.fullmatch(name):
        raise ValueError(f"not a safe database name: {name!r} (letters, digits, underscores)")
    return name


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class PostgreSQLServer(Server):
    """A throwaway PostgreSQL cluster (trust authentication, 127.0.0.1 only).

    ``url`` points at :attr:`database`, created at first start;
    :meth:`create_database` makes more.
    """

    kind = "postgresql"
    # SIGTERM is a "smart" shutdown that waits for every client to disconnect
    # (pooled test connections never do); SIGINT is the fast clean shutdown.
    stop_signal = signal.SIGINT
    accounts = ("postgres",)
    user = "postgres"
    database = "pyncette_test"

    def __init__(self, parent: str | os.PathLike[str] | None = None, port: int | None = None):
        self.postgres = _find_postgres()
        if self.postgres is None:
            raise BackendUnavailable("PostgreSQL", "postgres", "postgresql")
        bin_dir = os.path.dirname(os.path.realpath(self.postgres))
        self.initdb = _find_binary(["initdb"], [bin_dir, *_postgresql_bin_dirs()])
        if self.initdb is None:
            raise BackendUnavailable("PostgreSQL", "initdb", "postgresql")
        local = os.path.join(bin_dir, "initdb")
        if os.path.isfile(local):
            self.initdb = local
        super().__init__(parent, port)
        self.data_dir = self.base_dir / "data"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A psycopg connection (the caller closes it)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database or self.database,
            **kwargs,
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (default: a unique name); return its URL."""
        name = _check_identifier(name or _unique_name("t"))
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting its clients."""
        name = _check_identifier(name)
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _initialize(self) -> None:
        self._run_setup(
            [
                self.initdb,
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb.log",
        )
        (self.data_dir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n"
        )

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "timezone": "UTC",
        }
        command = [self.postgres, "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _probe(self) -> None:
        with self.connect("postgres", connect_timeout=2) as conn:
            (data_dir,) = conn.execute("SHOW data_directory").fetchone()
        self._check_data_dir(data_dir)

    def _after_first_start(self) -> None:
        self.create_database(self.database)


class MariaDBServer(Server):
    """A throwaway MariaDB server (``root`` without password, 127.0.0.1 only).

    ``url`` points at :attr:`database`, created at first start;
    :meth:`create_database` makes more.
    """

    kind = "mariadb"
    accounts = ("mysql",)
    user = "root"
    database = "pyncette_test"

    #: Options for speed: tests never need durability.
    fast_options = (
        "--skip-log-bin",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=16M",
        "--innodb-doublewrite=0",
        "--max-connections=300",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
    )

    def __init__(self, parent: str | os.PathLike[str] | None = None, port: int | None = None):
        self.mariadbd = _find_mariadbd()
        if self.mariadbd is None:
            raise BackendUnavailable("MariaDB", "mariadbd", "mariadb-server")
        self.install_db = _find_binary(
            ["mariadb-install-db", "mysql_install_db"], ["/usr/bin", "/usr/local/mysql/scripts"]
        )
        if self.install_db is None:
            raise BackendUnavailable("MariaDB", "mariadb-install-db", "mariadb-server")
        super().__init__(parent, port)
        self.data_dir = self.base_dir / "data"
        self.socket_path = self.base_dir / "mysqld.sock"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"mysql+pymysql://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection (the caller closes it); ``database=''`` for none."""
        import pymysql

        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password="",
            database=self.database if database is None else (database or None),
            charset="utf8mb4",
            **kwargs,
        )

    def create_database(
        self, name: str | None = None, *, charset: str = "utf8mb4", collation: str | None = None
    ) -> str:
        """Create an empty database (default: a unique name); return its URL.

        ``charset`` and ``collation`` are the database's defaults (for tests
        that must hold whatever a server is configured with).
        """
        name = _check_identifier(name or _unique_name("t"))
        options = f"CHARACTER SET {_check_identifier(charset)}"
        if collation is not None:
            options += f" COLLATE {_check_identifier(collation)}"
        conn = self.connect("", autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}` {options}")
        finally:
            conn.close()
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        name = _check_identifier(name)
        conn = self.connect("", autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def _initialize(self) -> None:
        self._run_setup(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
            ],
            "install-db.log",
        )

    def _command(self) -> list[str]:
        return [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base_dir / 'mysqld.pid'}",
            f"--tmpdir={self.base_dir}",
            *self.fast_options,
        ]

    def _probe(self) -> None:
        conn = self.connect("", connect_timeout=2)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT @@datadir")
                (data_dir,) = cursor.fetchone()
        finally:
            conn.close()
        self._check_data_dir(data_dir)

    def _after_first_start(self) -> None:
        self.create_database(self.database)


class RedisServer(Server):
    """A throwaway Redis server (no persistence, protected mode, 127.0.0.1 only).

    ``stop()`` and ``restart()`` save the data first (``SAVE`` into the
    server's directory), so like the SQL servers it survives a restart;
    ``kill()`` loses it, as a crash would.
    """

    kind = "redis"
    accounts = ("redis",)

    def __init__(self, parent: str | os.PathLike[str] | None = None, port: int | None = None):
        self.redis_server = _find_redis_server()
        if self.redis_server is None:
            raise BackendUnavailable("Redis", "redis-server", "redis-server")
        super().__init__(parent, port)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client for database 0 (the caller closes it)."""
        import redis

        kwargs.setdefault("socket_connect_timeout", 5)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=self.host, port=self.port, db=0, **kwargs)

    def flushall(self) -> None:
        """Delete every key in every database."""
        with self.client() as client:
            client.flushall()

    def stop(self, timeout: float = STOP_TIMEOUT, *, save: bool = True) -> None:
        """Stop by pid; with ``save`` (the default) write the data to disk first."""
        if save and self.running:
            with contextlib.suppress(Exception), self.client(socket_timeout=timeout) as client:
                client.save()
        super().stop(timeout)

    def close(self) -> None:
        if not self.closed:
            self.stop(save=False)
        super().close()

    def _command(self) -> list[str]:
        return [
            self.redis_server,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.base_dir),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _probe(self) -> None:
        with self.client(socket_connect_timeout=1, socket_timeout=2) as client:
            client.ping()
            data_dir = client.config_get("dir")
        value = data_dir.get("dir", data_dir.get(b"dir", b""))
        self._check_data_dir(value.decode() if isinstance(value, bytes) else value)


#: A cluster node talks to its peers on its port plus this offset (the cluster bus).
CLUSTER_BUS_OFFSET = 10000
#: Every key of a Redis Cluster hashes to one of this many slots.
CLUSTER_SLOTS = 16384
#: Milliseconds without an answer after which cluster nodes take a peer to be down.
CLUSTER_NODE_TIMEOUT_MS = 3000


def free_cluster_port(host: str = HOST) -> int:
    """A free port on ``host`` whose cluster bus port (``+ 10000``) is free too."""
    for _ in range(200):
        port = free_port(host)
        bus = port + CLUSTER_BUS_OFFSET
        if bus > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, bus))
            except OSError:
                continue
        return port
    raise ServerError(f"found no free port on {host} whose cluster bus port is free too")


def _find_redis_cli() -> str | None:
    return _find_binary(["redis-cli"], ["/usr/bin", "/usr/local/bin"])


def _cluster_info(client: Any) -> dict[str, str]:
    """``CLUSTER INFO`` of the node ``client`` talks to, as a dict of strings."""
    text = client.execute_command("CLUSTER", "INFO")
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):  # some redis-py versions parse it already
        return {str(key): str(value) for key, value in text.items()}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


class RedisClusterNode(RedisServer):
    """One master of a :class:`RedisClusterServer` (cluster mode, ``nodes.conf`` in its folder).

    Like :class:`RedisServer`, ``stop()`` saves its keys first, so a node
    stopped and started again comes back with its keys, its node id and its
    slots, and rejoins its cluster.
    """

    kind = "redis-cluster"

    def _pick_port(self) -> int:
        return free_cluster_port(self.host)

    @property
    def address(self) -> str:
        """``host:port``, as cluster tools and URLs name a node."""
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = STOP_TIMEOUT, *, save: bool = True) -> None:
        """Stop by pid; with ``save`` (the default) ``SHUTDOWN SAVE`` first.

        Saving and exiting in one command means no write a client makes in
        between is lost: what the node acknowledged is what it comes back with.
        """
        if save and self.running:
            with contextlib.suppress(Exception), self.client(socket_timeout=timeout) as client:
                client.shutdown(save=True)
        super().stop(timeout, save=False)

    def cluster_info(self) -> dict[str, str]:
        """This node's ``CLUSTER INFO`` (``cluster_state``, ``cluster_slots_ok``...)."""
        with self.client(socket_connect_timeout=1, socket_timeout=5) as client:
            return _cluster_info(client)

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(CLUSTER_NODE_TIMEOUT_MS),
            # The masters have no replicas: without this, one master down would
            # stop the whole cluster instead of only its own slots.
            "--cluster-require-full-coverage",
            "no",
        ]


class RedisClusterServer:
    """A throwaway Redis Cluster: three masters, no replicas, 127.0.0.1 only.

    Each master is a :class:`RedisClusterNode` with its own folder and port;
    at first start they are joined with ``redis-cli --cluster create`` and
    share the 16384 slots. ``url`` is ``redis+cluster://127.0.0.1:<port of
    the first node>``. :meth:`stop_node` and :meth:`start_node` take one
    master down and bring it back (keys, node id and slots kept); the others
    keep serving their own slots meanwhile (``cluster-require-full-coverage
    no``). ``start()`` returns once every running node reports
    ``cluster_state:ok`` with every slot served.
    """

    kind = "redis-cluster"

    def __init__(self, parent: str | os.PathLike[str] | None = None, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        self.redis_server = _find_redis_server()
        if self.redis_server is None:
            raise BackendUnavailable("Redis Cluster", "redis-server", "redis-server")
        self.redis_cli = _find_redis_cli()
        if self.redis_cli is None:
            raise BackendUnavailable("Redis Cluster", "redis-cli", "redis-tools")
        self.host = HOST
        self.parent = parent
        self.nodes: list[RedisClusterNode] = []
        try:
            for _ in range(masters):
                self.nodes.append(RedisClusterNode(parent))
        except BaseException:
            self.close()
            raise
        self.created = False
        self.closed = False
        self.startup_seconds: float | None = None

    # -- public -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port of the first node (the one :attr:`url` names)."""
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """The ``pyncette.url`` of this cluster: ``redis+cluster://`` and its first node."""
        return f"redis+cluster://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return all(node.running for node in self.nodes)

    def start(self, timeout: float = START_TIMEOUT) -> RedisClusterServer:
        """Start the nodes that are down (creating the cluster the first time) and wait
        until every node serves the cluster."""
        if self.closed:
            raise ServerError(f"the Redis Cluster of {self.nodes[0].base_dir} was closed")
        began = time.monotonic()
        for node in self.nodes:
            node.start(timeout)
        if not self.created:
            self._create(timeout)
            self.created = True
        self.wait_ok(timeout)
        if self.startup_seconds is None:
            self.startup_seconds = time.monotonic() - began
        return self

    def stop_node(self, index: int, *, save: bool = True) -> None:
        """Stop master ``index`` by pid (saving its keys first unless ``save=False``)."""
        self.nodes[index].stop(save=save)

    def start_node(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Start master ``index`` again and wait until the whole cluster is healthy."""
        self.nodes[index].start(timeout)
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node says ``cluster_state:ok`` and sees every slot
        assigned to, and served by, a node that is up."""
        deadline = time.monotonic() + timeout
        problem = "no node answered"
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"Redis Cluster not healthy after {timeout:g}s: {problem}; "
                    f"log {self.nodes[0].log_path}:\n{self.nodes[0].log_tail()}"
                )
            time.sleep(0.1)

    def client(self, **kwargs: Any) -> Any:
        """A redis-py ``RedisCluster`` client of this cluster (the caller closes it)."""
        from redis.cluster import RedisCluster

        kwargs.setdefault("socket_connect_timeout", 5)
        kwargs.setdefault("socket_timeout", 10)
        return RedisCluster(host=self.host, port=self.port, **kwargs)

    def node_of_slot(self, slot: int) -> int:
        """The index (in :attr:`nodes`) of the master serving ``slot``."""
        for index, ranges in self.slot_ranges().items():
            if any(first <= slot <= last for first, last in ranges):
                return index
        raise ServerError(f"no node of the cluster serves slot {slot}")

    def slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        """The slot ranges each master serves, by node index (from ``CLUSTER SLOTS``)."""
        by_port = {node.port: index for index, node in enumerate(self.nodes)}
        for node in self.nodes:
            if not node.running:
                continue
            with node.client(socket_connect_timeout=1, socket_timeout=5) as client:
                found = client.execute_command("CLUSTER", "SLOTS")
            ranges: dict[int, list[tuple[int, int]]] = {index: [] for index in by_port.values()}
            for entry in _slot_entries(found):
                first, last, port = entry
                ranges[by_port[port]].append((first, last))
            return ranges
        raise ServerError("no node of the cluster runs")

    def flushall(self) -> None:
        """Delete every key on every running master."""
        for node in self.nodes:
            if node.running:
                node.flushall()

    def close(self) -> None:
        """Stop every node and remove their folders (idempotent)."""
        self.closed = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()

    def __enter__(self) -> RedisClusterServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        nodes = ", ".join(
            f"{node.port}{'' if node.running else ' (stopped)'}" for node in self.nodes
        )
        return f"<RedisClusterServer {self.host} ports {nodes}>"

    # -- plumbing -----------------------------------------------------------

    def _create(self, timeout: float) -> None:
        self.nodes[0]._run_setup(
            [
                self.redis_cli,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            "cluster-create.log",
            timeout=timeout,
        )

    def _problem(self) -> str | None:
        """Why the cluster is not healthy yet, or None."""
        running = [node for node in self.nodes if node.running]
        if not running:
            return "no node runs"
        for node in running:
            try:
                info = node.cluster_info()
            except Exception as exc:
                return f"{node.address} does not answer CLUSTER INFO ({exc!r})"
            expected = {
                "cluster_state": "ok",
                "cluster_slots_assigned": str(CLUSTER_SLOTS),
                "cluster_known_nodes": str(len(self.nodes)),
            }
            if len(running) == len(self.nodes):
                # Every slot is served by a node its peers see as up (no PFAIL/FAIL).
                expected["cluster_slots_ok"] = str(CLUSTER_SLOTS)
            wrong = {
                key: info.get(key) for key, value in expected.items() if info.get(key) != value
            }
            if wrong:
                return f"{node.address} reports {wrong}"
        return None


def _slot_entries(found: Any) -> list[tuple[int, int, int]]:
    """``(first slot, last slot, master port)`` from a ``CLUSTER SLOTS`` reply."""
    entries = []
    if isinstance(found, dict):  # redis-py may parse it into {(first, last): {...}}
        for (first, last), value in found.items():
            primary = value.get("primary") or value.get("master")
            entries.append((int(first), int(last), int(primary[1])))
        return entries
    for entry in found:
        first, last, primary = entry[0], entry[1], entry[2]
        entries.append((int(first), int(last), int(primary[1])))
    return entries


# --------------------------------------------------------------------------- function API


def _start(cls: type[Server], parent: str | os.PathLike[str] | None, port: int | None) -> Any:
    server = cls(parent, port)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def start_postgresql(
    parent: str | os.PathLike[str] | None = None, port: int | None = None
) -> PostgreSQLServer:
    """Start a PostgreSQL server with its data in a new directory under ``parent``.

    Close it (or use it as a context manager) when done.
    :raises BackendUnavailable: PostgreSQL is not installed.
    :raises ServerError: it did not start (the message has its log).
    """
    return _start(PostgreSQLServer, parent, port)


def start_mariadb(
    parent: str | os.PathLike[str] | None = None, port: int | None = None
) -> MariaDBServer:
    """Start a MariaDB server; see :func:`start_postgresql`."""
    return _start(MariaDBServer, parent, port)


def start_redis(
    parent: str | os.PathLike[str] | None = None, port: int | None = None
) -> RedisServer:
    """Start a Redis server; see :func:`start_postgresql`."""
    return _start(RedisServer, parent, port)


def start_redis_cluster(parent: str | os.PathLike[str] | None = None) -> RedisClusterServer:
    """Start a Redis Cluster of three masters, each in a new directory under ``parent``.

    Close it (or use it as a context manager) when done.
    :raises BackendUnavailable: ``redis-server`` or ``redis-cli`` is not installed.
    :raises ServerError: it did not start or did not become healthy.
    """
    cluster = RedisClusterServer(parent)
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


# --------------------------------------------------------------------------- pytest plugin

#: The servers (and clusters) this session started, for the terminal summary.
_STARTED: list[Server | RedisClusterServer] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyncette backends")
    group.addoption(
        "--require-backends",
        action="store_true",
        default=False,
        help=(
            "fail, instead of skip, tests whose server (PostgreSQL, MariaDB, Redis, Redis "
            f"Cluster) is not installed; the same as {REQUIRE_BACKENDS_ENV}=1"
        ),
    )


def pytest_report_header(config: pytest.Config) -> str:
    found = {
        "postgresql": _find_postgres(),
        "mariadb": _find_mariadbd(),
        "redis": _find_redis_server(),
        "redis-cli": _find_redis_cli(),
    }
    listed = ", ".join(f"{name}={path or 'MISSING'}" for name, path in found.items())
    mode = "fail" if _required(config) else "skip"
    return f"backends: {listed} (missing backends {mode})"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STARTED:
        return
    terminalreporter.section("backend servers")
    for server in _STARTED:
        took = f"{server.startup_seconds:.2f}s" if server.startup_seconds is not None else "?"
        terminalreporter.write_line(
            f"{server.kind}: {server.host}:{server.port}, first start {took}"
        )


def _required(config: pytest.Config) -> bool:
    return backends_required(config.getoption("require_backends", default=False))


def _session_server(
    request: pytest.FixtureRequest, cls: type[Server] | type[RedisClusterServer]
) -> Iterator[Any]:
    try:
        server = cls()
    except BackendUnavailable as exc:
        handle_unavailable(str(exc), required=_required(request.config))
    try:
        server.start()
        _STARTED.append(server)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgresql_server(request: pytest.FixtureRequest) -> Iterator[PostgreSQLServer]:
    """A PostgreSQL server shared by the whole session (started on first use)."""
    yield from _session_server(request, PostgreSQLServer)


@pytest.fixture(scope="session")
def mariadb_server(request: pytest.FixtureRequest) -> Iterator[MariaDBServer]:
    """A MariaDB server shared by the whole session (started on first use)."""
    yield from _session_server(request, MariaDBServer)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A Redis server shared by the whole session (started on first use)."""
    yield from _session_server(request, RedisServer)


@pytest.fixture(scope="session")
def redis_cluster_server(request: pytest.FixtureRequest) -> Iterator[RedisClusterServer]:
    """A Redis Cluster of three masters shared by the whole session (started on first use)."""
    yield from _session_server(request, RedisClusterServer)


#: The password :func:`redis_requiring_a_password` expects.
REDIS_PASSWORD = "the-right-one"


@pytest.fixture
def redis_requiring_a_password() -> Iterator[RedisServer]:
    """A Redis server of the test's own that refuses clients without :data:`REDIS_PASSWORD`.

    Its ``url`` carries no password. Skipped when no Redis server can start.
    """
    try:
        server = start_redis()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        with server.client() as client:
            client.config_set("requirepass", REDIS_PASSWORD)
        yield server
    finally:
        server.kill()
        server.close()

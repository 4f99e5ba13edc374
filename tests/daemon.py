"""Running ``pscheduler`` for tests: INI files, processes, persistent stores, due jobs.

The INI files :func:`write_ini` writes serve :mod:`tests.procapp` (or
:func:`bare_app`, an app without the include); :func:`spawn` starts a real
daemon on one of them, :func:`run_pscheduler` runs the command in process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.inifiles import logging_sections

#: The repository root (the folder holding ``pyproject.toml``).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The installed console script when there is one (it is what users run).
_script = shutil.which("pscheduler")
#: The command line that starts ``pscheduler``.
PSCHEDULER = [_script] if _script else [sys.executable, "-m", "pyramid_pyncette.scripts.pscheduler"]

#: The stores a separate process can share, by fixture prefix (``<kind>_server``).
PERSISTENT_STORES = ["sqlite", "postgresql", "mariadb", "redis"]


def store_supported(url: str) -> bool:
    """Whether ``create_repository`` knows ``url``'s store (it builds without connecting)."""
    from pyramid_pyncette.repository import UnsupportedStoreError, create_repository
    from pyramid_pyncette.settings import PyncetteSettings

    try:
        repository = create_repository(PyncetteSettings(url=url))
    except (UnsupportedStoreError, ImportError):
        return False
    except ValueError as exc:
        # The client library refuses the URL's scheme: the store does not know this form.
        return "scheme" not in str(exc).lower()
    except Exception:
        return True  # supported but broken or unreachable: let the tests show why
    with contextlib.suppress(Exception):
        repository.close()
    return True


#: The test id of the Redis Cluster store (``redis+cluster://`` URLs).
REDIS_CLUSTER = "redis-cluster"
#: Whether the package takes ``redis+cluster://`` URLs (the cluster's tests run only then).
#: Port 1 of the loopback: nothing answers there, should the check connect.
REDIS_CLUSTER_SUPPORTED = store_supported("redis+cluster://127.0.0.1:1")

if REDIS_CLUSTER_SUPPORTED:
    PERSISTENT_STORES.append(REDIS_CLUSTER)

#: The test id of the DynamoDB store, on the session's moto server (:mod:`tests.moto_server`).
#: Always listed, as in ``conftest.STORES``: without moto's server its fixture skips the
#: tests naming the install, or fails them under ``--require-backends``. The server takes
#: one request at a time, so the suites give it fewer jobs than the other stores (their
#: ``*_JOBS_OF`` maps).
DYNAMODB = "dynamodb"
PERSISTENT_STORES.append(DYNAMODB)


def write_ini(tmp_path: Path, url: str, include: bool = True, extra: str = "") -> tuple[str, str]:
    """Write ``app.ini`` for :mod:`tests.procapp` on the store ``url``: ``(ini, records folder)``.

    ``include=False`` serves :func:`bare_app` instead; ``extra`` is more raw
    lines of the ``[app:main]`` section.
    """
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    factory = "call:tests.procapp:main" if include else "call:tests.daemon:bare_app"
    ini = tmp_path / "app.ini"
    ini.write_text(
        textwrap.dedent(
            f"""\
            [app:main]
            use = {factory}
            record_dir = {records}
            pyncette.url = {url}
            pyncette.poll_interval = 0.2s
            pyncette.concurrency = 4
            EXTRA

            LOGGING
            """
        )
        .replace("EXTRA", textwrap.dedent(extra).strip())
        .replace(
            "LOGGING", logging_sections("%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s")
        )
    )
    return str(ini), str(records)


def bare_app(global_config: dict[str, Any], **settings: Any) -> Any:
    """An app that forgot to include pyramid_pyncette."""
    from pyramid.config import Configurator

    with Configurator(settings=settings) as config:
        pass
    return config.make_wsgi_app()


def bootstrap_registry(ini: str) -> Any:
    """The registry of the app ``ini`` describes, bootstrapped in this process."""
    from pyramid.paster import bootstrap

    env = bootstrap(ini)
    env["closer"]()
    return env["registry"]


def add_due_jobs(registry: Any, count: int, seconds: float = 0.0, **options: Any) -> set[str]:
    """Add ``count`` one-off ``record`` jobs due a second ago; return their ids.

    Each run takes ``seconds``; ``options`` are the jobs' options.
    """
    from pyramid_pyncette.jobs import Job

    now = datetime.now(timezone.utc) - timedelta(seconds=1)
    jobs = [
        Job(
            id=f"job-{n:06d}",
            task="record",
            schedule={"kind": "date", "run_at": now.isoformat()},
            kwargs={"seconds": seconds} if seconds else {},
            options=options,
            due_at=now,
            next_run_at=now,
            created_at=now,
        )
        for n in range(count)
    ]
    registry.scheduler.repository.add(jobs)
    return {job.id for job in jobs}


def run_pscheduler(*argv: str) -> int:
    """Run ``pscheduler argv...`` in this process; return its exit status."""
    from pyramid_pyncette.scripts import pscheduler

    return pscheduler.main(["pscheduler", *argv], quiet=False)


def pscheduler_output(ini: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``pscheduler args... ini`` to its end in a process: ``(status, stdout + stderr)``."""
    done = subprocess.run(
        [*PSCHEDULER, *args, ini],
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def process_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(ini: str, *args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start ``pscheduler args... ini``; its stderr is a pipe, its stdout ``stdout``."""
    return subprocess.Popen(
        [*PSCHEDULER, *args, ini],
        env=process_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def leased(registry: Any) -> list[Any]:
    """The jobs of ``registry``'s store that a daemon holds a lease on."""
    return [job for job in registry.scheduler.iter_jobs() if job.locked_by is not None]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``condition()`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def persistent_store(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> tuple[str, str]:
    """``(url, extra INI lines)`` of a fresh store of ``kind`` (see :data:`PERSISTENT_STORES`)."""
    if kind == REDIS_CLUSTER:  # a namespace of its own on the session's cluster
        cluster = request.getfixturevalue("redis_cluster_server")
        cluster.start()
        return cluster.url, f"pyncette.redis_namespace = p{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.sqlite", ""
    if kind == DYNAMODB:  # a table of its own in the session's moto server
        return request.getfixturevalue("dynamodb_server").url(f"p{uuid.uuid4().hex[:8]}"), ""
    server = request.getfixturevalue(f"{kind}_server")
    server.start()
    if kind == "redis":
        return server.url, f"pyncette.redis_namespace = p{uuid.uuid4().hex[:8]}"
    return server.create_database(), ""

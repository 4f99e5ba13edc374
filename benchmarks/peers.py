"""Peer schedulers side by side: a separate virtualenv and :mod:`benchmarks.peer_child`.

The peers are never project dependencies. :class:`Peers` creates
``benchmarks/.venv-peers`` (git-ignored) on first use, installs the pinned
peers there with that venv's pip, and runs ``peer_child.py`` with the venv's
interpreter for each measurement. When the venv cannot be built, the reason
is kept and every peer row says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR
from benchmarks.stores import Target

VENV_DIR = BENCH_DIR / ".venv-peers"

#: What the venv holds; pyncette's extras named as in its package metadata.
REQUIREMENTS = [
    "pyncette[redis,postgres,mysql]==1.1.0",
    "APScheduler==3.11.*",
    "SQLAlchemy>=2.0",
    "psycopg[binary]>=3.1",
    "PyMySQL>=1.1",
    # The same C reply parser ours uses (redis[hiredis]), so Redis runs compare engines.
    "hiredis",
]

#: Which stores each peer runs on. pyncette 1.1.0's MySQL store creates a
#: functional index (MySQL 8 syntax) that MariaDB rejects, so not on MariaDB.
PEER_STORES = {
    "pyncette": ("sqlite", "postgresql", "redis"),
    "apscheduler": ("sqlite", "postgresql"),
}


class PeerError(RuntimeError):
    """A peer run failed."""


class Peers:
    """The peers' virtualenv and how to run a workload in it."""

    def __init__(self, venv_dir: Path = VENV_DIR) -> None:
        self.venv_dir = venv_dir
        self.python = venv_dir / "bin" / "python"
        self.error: str | None = None
        self.versions: dict[str, str] = {}
        self._ready = False

    def ensure(self) -> bool:
        """Create and fill the venv if needed; False (and :attr:`error`) if it cannot."""
        if self._ready or self.error:
            return self._ready
        try:
            if not self.python.exists():
                print(f"creating the peers' virtualenv in {self.venv_dir} ...", flush=True)
                venv.create(self.venv_dir, with_pip=True)
            if not self._installed():
                print("installing " + ", ".join(REQUIREMENTS) + " ...", flush=True)
                subprocess.run(
                    [
                        str(self.python),
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        *REQUIREMENTS,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            self.versions = self._child(["versions"], timeout=60)
        except subprocess.CalledProcessError as exc:
            self.error = f"peers cannot be installed: {(exc.stderr or exc.stdout or '')[-500:]}"
        except Exception as exc:
            self.error = f"peers cannot be installed: {type(exc).__name__}: {exc}"
        self._ready = self.error is None
        return self._ready

    def _installed(self) -> bool:
        check = (
            "import importlib.metadata as m, sys; "
            "v = m.version('pyncette'), m.version('APScheduler'); "
            "import pyncette.postgres, pyncette.redis, pyncette.mysql, apscheduler, psycopg; "
            "import hiredis; "
            "sys.exit(0 if v[0] == '1.1.0' and v[1].startswith('3.11.') else 1)"
        )
        done = subprocess.run([str(self.python), "-c", check], capture_output=True)
        return done.returncode == 0

    def label(self, system: str) -> str:
        """``pyncette 1.1.0`` / ``APScheduler 3.11.x``."""
        if system == "pyncette":
            return f"pyncette {self.versions.get('pyncette', '?')}"
        return f"APScheduler {self.versions.get('APScheduler', '?')}"

    @staticmethod
    def supports(system: str, store: str) -> bool:
        return store in PEER_STORES[system]

    def run(
        self, mode: str, system: str, target: Target, n: int, settings: Any, timeout: float
    ) -> dict[str, Any]:
        """Run one peer measurement against ``target``; the child's JSON result."""
        args = [
            mode,
            "--system",
            system,
            "--store",
            target.store,
            "--n",
            str(n),
            "--batch-size",
            str(settings.batch_size),
            "--concurrency",
            str(settings.concurrency),
            "--poll-interval",
            str(settings.poll_interval),
            "--timeout",
            str(timeout),
        ]
        if target.store == "sqlite":
            args += ["--path", target.path, "--url", target.url]
        elif target.store == "redis":
            args += ["--url", target.url]
        else:
            args += [
                "--url",
                target.url,
                "--host",
                target.host,
                "--port",
                str(target.port),
                "--user",
                target.user,
                "--database",
                target.database,
            ]
        return self._child(args, timeout=timeout + 300)

    def _child(self, args: list[str], timeout: float) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONPATH"] = str(BENCH_DIR)
        done = subprocess.run(
            [str(self.python), str(BENCH_DIR / "peer_child.py"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(BENCH_DIR),
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no output)"]
            raise PeerError(
                f"peer_child {' '.join(args[:3])} exited with {done.returncode}: {lines[-1]}"
            )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise PeerError(f"peer_child printed no result: {done.stdout[-300:]!r}")
        return json.loads(lines[-1])

"""Shared helpers: paths, INI files, daemon processes, /proc readings, statistics."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def ensure_importable() -> None:
    """Put the repository root on ``sys.path`` (``tests.servers``, ``benchmarks.*``)."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def child_env() -> dict[str, str]:
    """The environment of processes we spawn: the repository root importable."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def pscheduler_command() -> list[str]:
    """The installed ``pscheduler`` script of this interpreter (what users run)."""
    script = Path(sys.executable).with_name("pscheduler")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pyramid_pyncette.scripts.pscheduler"]


@dataclass(frozen=True)
class Settings:
    """Daemon settings shared by every workload (CLI options)."""

    batch_size: int = 100
    concurrency: int = 10
    poll_interval: float = 1.0

    def app_settings(self, url: str, **extra: str) -> dict[str, str]:
        settings = {
            "pyncette.url": url,
            "pyncette.batch_size": str(self.batch_size),
            "pyncette.concurrency": str(self.concurrency),
            "pyncette.poll_interval": f"{self.poll_interval}s",
        }
        settings.update(extra)
        return settings


def write_ini(folder: Path, settings: dict[str, str]) -> Path:
    """An INI file running :mod:`benchmarks.app` with ``settings`` (warnings only in the log)."""
    from tests.inifiles import logging_sections

    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    ini = folder / "bench.ini"
    ini.write_text(
        textwrap.dedent(
            """\
            [app:main]
            use = call:benchmarks.app:main
            SETTINGS

            LOGGING
            """
        )
        .replace("SETTINGS", lines)
        .replace("LOGGING", logging_sections(level="WARNING"))
    )
    return ini


def make_registry(settings: dict[str, str]) -> Any:
    """The registry of the benchmark app (for ``registry.scheduler``) built in this process."""
    from benchmarks.app import main

    return main({}, **settings).registry


# --------------------------------------------------------------------------- jobs


def due_jobs(
    count: int,
    *,
    due: datetime | None = None,
    prefix: str = "job",
    start: int = 0,
    queues: int = 0,
) -> list[Any]:
    """``count`` one-off ``bench.noop`` jobs (``job-<start>``...) due at ``due`` (a second ago).

    With ``queues``, job ``n`` is in queue ``q<n % queues>`` (else in the default queue).
    """
    from benchmarks.app import NOOP_TASK
    from pyramid_pyncette.jobs import Job
    from pyramid_pyncette.schedules import DateSchedule

    due = due or datetime.now(timezone.utc) - timedelta(seconds=1)
    schedule = DateSchedule(due).to_json()
    return [
        Job(
            id=f"{prefix}-{n:07d}",
            task=NOOP_TASK,
            schedule=schedule,
            due_at=due,
            next_run_at=due,
            created_at=due,
            **({"queue": f"q{n % queues}"} if queues else {}),
        )
        for n in range(start, start + count)
    ]


def insert_due_jobs(
    repository: Any,
    count: int,
    *,
    due: datetime | None = None,
    start: int = 0,
    chunk: int = 10_000,
    queues: int = 0,
) -> float:
    """Bulk-insert jobs ``job-<start>`` to ``job-<count - 1>`` (built chunk by chunk),
    spread over ``queues`` queues when given (see :func:`due_jobs`).

    Returns the seconds the inserts took.
    """
    spent = 0.0
    for first in range(start, count, chunk):
        jobs = due_jobs(min(chunk, count - first), due=due, start=first, queues=queues)
        began = time.perf_counter()
        repository.add(jobs)
        spent += time.perf_counter() - began
    return spent


def job_ids(count: int, prefix: str = "job") -> set[str]:
    """The ids :func:`due_jobs` gives ``count`` jobs."""
    return {f"{prefix}-{n:07d}" for n in range(count)}


# --------------------------------------------------------------------------- processes


class Daemon:
    """One ``pscheduler`` process whose output goes to a log file."""

    def __init__(self, ini: Path, *args: str, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [*pscheduler_command(), *args, str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=str(ini.parent),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> int:
        """Wait for exit (SIGKILL after ``timeout``); return the exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            raise TimeoutError(
                f"pscheduler pid {self.pid} did not finish in {timeout:g}s; log "
                f"{self.log_path}:\n{tail(self.log_path)}"
            ) from None
        finally:
            self._log.close()
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (graceful stop), then wait."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Stop for good, without waiting for graceful shutdown (error paths)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait()
        if not self._log.closed:
            self._log.close()

    def check(self, code: int) -> None:
        if code != 0:
            raise RuntimeError(
                f"pscheduler pid {self.pid} exited with {code}; log {self.log_path}:\n"
                f"{tail(self.log_path)}"
            )


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    # The command name may hold spaces: fields start after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), nearest-rank on sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(ours: float | None, reference: float | None) -> float | None:
    if ours is None or reference in (None, 0):
        return None
    return ours / reference


def rate(count: int, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return count / seconds


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python, library versions and the git commit."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("SQLAlchemy", "psycopg", "PyMySQL", "redis", "pyramid", "WebTest"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "libraries": versions,
        "loadavg": os.getloadavg(),
    }


def git_commit() -> str:
    """HEAD's commit, with ``+dirty`` if tracked files changed (read-only git calls)."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "--no-optional-locks", "diff", "--quiet", "HEAD", "--"],
            cwd=ROOT,
            capture_output=True,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")

"""Real ``pscheduler`` daemons serving ``/metrics`` and ``/healthz`` (``pyncette.metrics_port``).

A drained daemon's counters equal the runs it made; its health check answers
200 while it runs, 503 soon after its store stops, and 200 again once the
store is back. These run real processes on real time (``slow``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemon import (
    PSCHEDULER,
    add_due_jobs,
    bootstrap_registry,
    persistent_store,
    process_env,
    wait_for,
    write_ini,
)
from tests.procapp import read_runs

pytestmark = pytest.mark.slow

#: The daemons' poll interval (seconds), as tests/daemon.py writes it.
POLL = 0.2


def start_daemon(ini: str, log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``pscheduler -v ini`` logging to ``log``; ``(process, metrics port)``."""
    with open(log, "w") as stderr:
        daemon = subprocess.Popen(
            [*PSCHEDULER, "-v", ini],
            env=process_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    found: list[int] = []

    def port_logged() -> bool:
        assert daemon.poll() is None, log.read_text()
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
        if match:
            found.append(int(match.group(1)))
        return bool(found)

    wait_for(port_logged, 60, "the metrics port in the daemon's log")
    return daemon, found[0]


def stop_daemon(daemon: subprocess.Popen[str], log: Path) -> str:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)
    text = log.read_text()
    assert daemon.returncode == 0, text
    return text


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(port, "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def total(samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, keys), v in samples.items() if n == name and wanted <= set(keys))


def test_a_drained_daemons_counters_and_histograms_equal_the_runs_it_made(tmp_path):
    ini, records = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.metrics_port = 0"
    )
    registry = bootstrap_registry(ini)
    log = tmp_path / "daemon.log"
    daemon, port = start_daemon(ini, log)
    try:
        add_due_jobs(registry, 40)
        for n in range(3):
            registry.scheduler.add_async_job("fail", job_id=f"bad-{n}", max_retries=0)
        failed = lambda: [j for j in registry.scheduler.iter_jobs() if j.state == "failed"]  # noqa: E731
        wait_for(lambda: len(read_runs(records)) == 40 and len(failed()) == 3, 120, "the drain")
        # The last batch's outcomes are counted by the loop's next turn.
        wait_for(
            lambda: total(scrape(port), "pyncette_runs_total") == 43, 30, "the last runs counted"
        )
        samples = scrape(port)
        status, body = get(port, "/healthz")
    finally:
        stop_daemon(daemon, log)

    runs = read_runs(records)
    assert len(runs) == 40
    record = {"task": "record", "queue": "default"}
    assert total(samples, "pyncette_runs_total", outcome="succeeded", **record) == len(runs)
    assert total(samples, "pyncette_runs_total", task="fail", outcome="failed") == 3
    assert total(samples, "pyncette_run_duration_seconds_count", **record) == len(runs)
    assert total(samples, "pyncette_run_duration_seconds_count", task="fail") == 3
    assert total(samples, "pyncette_run_duration_seconds_bucket", le="+Inf", **record) == len(runs)
    assert total(samples, "pyncette_run_lateness_seconds_count", queue="default") == 43
    assert total(samples, "pyncette_claimed_jobs_total") == 43
    assert total(samples, "pyncette_claims_total") >= 1
    assert total(samples, "pyncette_running_jobs") == 0
    assert total(samples, "pyncette_store_errors_total") == 0
    assert total(samples, "pyncette_lease_lost_total") == 0
    assert total(samples, "pyncette_worker_info") == 1
    # The store-wide gauges: the three parked failures are all that is left.
    assert total(samples, "pyncette_jobs", queue="default", state="failed") == 3
    assert total(samples, "pyncette_jobs") == 3
    assert total(samples, "pyncette_oldest_due_seconds", queue="default") == 0
    assert status == 200
    assert json.loads(body)["store_reachable"] is True


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_healthz_is_503_soon_after_the_store_stops_and_200_once_it_is_back(request, tmp_path, kind):
    url, extra = persistent_store(request, tmp_path, kind)
    ini, _ = write_ini(tmp_path, url, extra=f"{extra}\npyncette.metrics_port = 0")
    server = request.getfixturevalue(f"{kind}_server")
    log = tmp_path / "daemon.log"
    daemon, port = start_daemon(ini, log)
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, "a healthy daemon")
        server.stop()
        stopped = time.monotonic()
        try:
            # The loop meets the outage at its next turn, at most one poll later.
            wait_for(lambda: get(port, "/healthz")[0] == 503, 25 * POLL, "503 after the stop")
            took = time.monotonic() - stopped
            status, body = get(port, "/healthz")
            assert status == 503
            assert json.loads(body)["store_reachable"] is False
        finally:
            server.start()
        wait_for(lambda: get(port, "/healthz")[0] == 200, 90, "200 once the store is back")
        samples = scrape(port)
    finally:
        text = stop_daemon(daemon, log)
    print(f"{kind}: 503 {took:.2f}s after the stop")
    assert "store unavailable" in text
    assert total(samples, "pyncette_store_errors_total") >= 1

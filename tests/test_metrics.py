"""Prometheus metrics and the health check: what a daemon counts, the store-wide gauges,
the HTTP server of ``/metrics`` and ``/healthz``, and ``pscheduler`` starting it.

The worker tests drive the loop one turn at a time on the fake clock over the
memory store (the loop of tests/test_worker_leases.py); what the metrics count
does not depend on the store (tests/test_metrics_store.py checks the counts
of every store). Real daemons are scraped in tests/test_health.py.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_pyncette.backoff import Backoff
from pyramid_pyncette.jobs import RUN_FAILED, RUN_LEASE_LOST, RUN_SKIPPED, RUN_SUCCEEDED
from tests.daemon import add_due_jobs, bootstrap_registry, run_pscheduler, write_ini
from tests.procapp import read_runs
from tests.test_worker_leases import Loop, other_daemon_claims


@pytest.fixture
def store_settings():
    """The memory store only: what a daemon counts does not depend on its store."""
    return {"pyncette.url": "memory://"}


def _metrics():
    from pyramid_pyncette.metrics import WorkerMetrics

    return WorkerMetrics()


def value(metrics, name, **labels):
    """The value of the sample ``name`` with ``labels`` in ``metrics``' registry (0 if none)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def measured_loop(app, **options):
    """A :class:`Loop` whose worker keeps metrics; ``(loop, metrics)``."""
    loop = Loop(app, **options)
    metrics = _metrics()
    metrics.attach(loop.worker, store_gauges=False)
    loop.worker.metrics = metrics
    return loop, metrics


def finish_all(loop):
    """Run every submitted run now, on the test's thread."""
    for running in loop.threads.submitted:
        loop.worker._run_one(running)
    loop.threads.submitted.clear()


# --------------------------------------------------------------------------- per daemon


def test_each_daemons_metrics_live_in_a_registry_of_their_own(app):
    from prometheus_client import REGISTRY

    first, second = _metrics(), _metrics()
    first.claimed(3)

    assert value(first, "pyncette_claimed_jobs_total") == 3
    assert value(second, "pyncette_claimed_jobs_total") == 0
    assert REGISTRY.get_sample_value("pyncette_claimed_jobs_total") is None


def test_runs_are_counted_by_task_queue_and_outcome(app):
    for n in range(3):
        app.scheduler.add_async_job("record", job_id=f"r{n}")
    app.scheduler.add_async_job("record", job_id="mail", queue="emails")
    app.scheduler.add_async_job("fail", job_id="bad", max_retries=0)
    loop, metrics = measured_loop(app)

    loop.turn()
    finish_all(loop)
    loop.turn()

    assert (
        value(metrics, "pyncette_runs_total", task="record", queue="default", outcome=RUN_SUCCEEDED)
        == 3
    )
    assert (
        value(metrics, "pyncette_runs_total", task="record", queue="emails", outcome=RUN_SUCCEEDED)
        == 1
    )
    assert (
        value(metrics, "pyncette_runs_total", task="fail", queue="default", outcome=RUN_FAILED) == 1
    )
    assert (
        value(metrics, "pyncette_runs_total", task="fail", queue="default", outcome=RUN_SUCCEEDED)
        == 0
    )


def test_run_durations_and_lateness_are_histograms_of_every_run(app):
    for n in range(4):
        app.scheduler.add_async_job("record", job_id=f"r{n}")
    app.clock.advance(7)  # the runs start 7 s after they were due
    loop, metrics = measured_loop(app)

    loop.turn()
    finish_all(loop)
    loop.turn()

    labels = {"task": "record", "queue": "default"}
    assert value(metrics, "pyncette_run_duration_seconds_count", **labels) == 4
    # The fake clock stands still while a job runs.
    assert value(metrics, "pyncette_run_duration_seconds_sum", **labels) == 0
    assert value(metrics, "pyncette_run_lateness_seconds_count", queue="default") == 4
    assert value(metrics, "pyncette_run_lateness_seconds_sum", queue="default") == pytest.approx(28)
    assert value(metrics, "pyncette_run_lateness_seconds_bucket", queue="default", le="5.0") == 0
    assert value(metrics, "pyncette_run_lateness_seconds_bucket", queue="default", le="10.0") == 4


def test_a_retry_is_late_from_its_retry_time_not_from_the_first_try(app):
    app.scheduler.add_async_job("fail", job_id="bad", max_retries=1, retry_backoff=60)
    loop, metrics = measured_loop(app)
    loop.turn()  # the first try starts on time and fails
    finish_all(loop)
    loop.turn()  # its failure is written: the retry is due within 60 s (with jitter)
    retry_at = app.scheduler.get_job("bad").due_at
    assert retry_at > app.clock()
    app.clock.advance((retry_at - app.clock()).total_seconds() + 3)  # 3 s late
    loop.turn()
    finish_all(loop)
    loop.turn()

    assert (
        value(metrics, "pyncette_runs_total", task="fail", queue="default", outcome=RUN_FAILED) == 2
    )
    assert value(metrics, "pyncette_run_lateness_seconds_count", queue="default") == 2
    # 0 s for the first try, 3 s for the retry (its backoff is no lateness).
    assert value(metrics, "pyncette_run_lateness_seconds_sum", queue="default") == pytest.approx(3)


def test_claims_and_claimed_jobs_are_counted(app):
    for n in range(5):
        app.scheduler.add_async_job("record", job_id=f"r{n}")
    loop, metrics = measured_loop(app, batch_size=3, concurrency=3)

    loop.turn()  # claims 3
    finish_all(loop)
    loop.turn()  # claims the other 2
    finish_all(loop)
    loop.turn()  # claims nothing

    assert value(metrics, "pyncette_claims_total") == 3
    assert value(metrics, "pyncette_claimed_jobs_total") == 5


def test_running_jobs_are_the_jobs_in_hand_when_scraped(app):
    for n in range(3):
        app.scheduler.add_async_job("record", job_id=f"r{n}")
    loop, metrics = measured_loop(app)

    loop.turn()
    assert value(metrics, "pyncette_running_jobs") == 3

    finish_all(loop)
    loop.turn()
    assert value(metrics, "pyncette_running_jobs") == 0


def test_worker_info_names_the_worker_its_host_and_version(app):
    from pyramid_pyncette.metrics import package_version

    loop, metrics = measured_loop(app)
    worker = loop.worker

    labels = {"worker_id": worker.id, "host": worker.host, "version": package_version()}
    assert value(metrics, "pyncette_worker_info", **labels) == 1
    assert package_version() not in ("", "unknown")


def test_a_lost_lease_is_counted_and_its_run_too(app):
    job = app.scheduler.add_async_job("record")
    loop, metrics = measured_loop(app)
    loop.turn()
    (running,) = loop.threads.submitted

    app.clock.advance(61)  # past the lease: another daemon takes the job
    assert [lease.job.id for lease in other_daemon_claims(app)] == [job.id]
    loop.worker._run_one(running)
    loop.turn()

    assert value(metrics, "pyncette_lease_lost_total") == 1
    labels = {"task": "record", "queue": "default"}
    assert value(metrics, "pyncette_runs_total", outcome=RUN_LEASE_LOST, **labels) == 1
    assert value(metrics, "pyncette_runs_total", outcome=RUN_SUCCEEDED, **labels) == 0


def test_a_skipped_misfire_is_counted_but_not_timed(app):
    app.scheduler.add_async_job("record", job_id="late", misfire_grace_time=5)
    app.clock.advance(60)
    loop, metrics = measured_loop(app)

    loop.turn()

    labels = {"task": "record", "queue": "default"}
    assert value(metrics, "pyncette_runs_total", outcome=RUN_SKIPPED, **labels) == 1
    assert value(metrics, "pyncette_run_duration_seconds_count", **labels) == 0


def test_failed_store_calls_are_counted(app):
    loop, metrics = measured_loop(app)
    loop.worker._backoff = Backoff(first=1e-6, cap=1e-6)  # no real wait after a failure
    repository = app.repository
    calls = []
    original = repository.complete_and_claim

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) <= 2:
            raise ConnectionError("store down")
        return original(*args, **kwargs)

    repository.complete_and_claim = failing
    loop.turn()
    loop.turn()
    assert value(metrics, "pyncette_store_errors_total") == 2
    loop.turn()
    assert value(metrics, "pyncette_store_errors_total") == 2


def test_a_worker_without_metrics_keeps_none(app):
    app.scheduler.add_async_job("record")
    loop = Loop(app)

    loop.turn()
    finish_all(loop)
    loop.turn()

    assert loop.worker.metrics is None
    assert loop.worker.stats["succeeded"] == 1


# --------------------------------------------------------------------------- health


def test_health_is_bad_until_the_loop_has_turned(app):
    from pyramid_pyncette.metrics import HealthCheck

    loop = Loop(app)
    healthy, document = HealthCheck(loop.worker).status()

    assert healthy is False
    assert document["status"] == "unhealthy"
    assert document["loop_last_tick_seconds_ago"] is None


def test_health_is_good_while_the_loop_turns_within_twice_the_poll_interval(app):
    from pyramid_pyncette.metrics import HealthCheck

    app.scheduler.add_async_job("record")
    loop = Loop(app, poll_interval=2)
    health = HealthCheck(loop.worker)
    loop.turn()

    app.clock.advance(4)
    healthy, document = health.status()
    assert healthy is True
    assert document == {
        "status": "ok",
        "loop_last_tick_seconds_ago": 4.0,
        "loop_tick_limit_seconds": 4.0,
        "store_reachable": True,
        "running_jobs": 1,
    }

    app.clock.advance(0.5)
    healthy, document = health.status()
    assert healthy is False
    assert document["status"] == "unhealthy"
    assert document["loop_last_tick_seconds_ago"] == 4.5


def test_health_is_bad_while_the_last_store_call_failed(app):
    from pyramid_pyncette.metrics import HealthCheck

    loop = Loop(app)
    loop.worker._backoff = Backoff(first=1e-6, cap=1e-6)
    health = HealthCheck(loop.worker)
    repository = app.repository
    original = repository.complete_and_claim
    down = [True]

    def maybe_failing(*args, **kwargs):
        if down[0]:
            raise ConnectionError("store down")
        return original(*args, **kwargs)

    repository.complete_and_claim = maybe_failing
    loop.turn()
    healthy, document = health.status()
    assert (healthy, document["store_reachable"]) == (False, False)

    down[0] = False
    loop.turn()
    healthy, document = health.status()
    assert (healthy, document["store_reachable"]) == (True, True)


def test_the_loop_turns_at_least_every_poll_interval_however_long_its_wait(app):
    # The health check counts on it: a loop waiting for a long renewal still turns.
    loop = Loop(app, poll_interval=1, concurrency=1)
    worker = loop.worker
    waits = []

    class Wake:
        def wait(self, timeout):
            waits.append(timeout)
            worker._stopping.set()

        def clear(self):
            pass

        def set(self):
            pass

    worker._wake = Wake()
    worker._prepare = lambda: True
    cycles = iter([30.0])
    worker._cycle = lambda threads, until_idle=False: next(cycles)
    worker.run()

    assert waits == [1]


# --------------------------------------------------------------------------- store-wide


class Ticker:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _store_collector(app, ticker):
    from pyramid_pyncette.metrics import StoreCollector

    calls = []
    original = app.scheduler.get_queues

    def counted():
        calls.append(1)
        return original()

    app.scheduler.get_queues = counted
    return StoreCollector(app.scheduler, ttl=5, monotonic=ticker), calls


def _samples(collector):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_store_gauges_count_jobs_by_queue_and_state_and_the_oldest_due_job_lateness(app):
    app.scheduler.add_date_job("record", app.clock() - timedelta(seconds=30), job_id="late")
    app.scheduler.add_date_job("record", app.clock() + timedelta(seconds=30), job_id="later")
    app.scheduler.add_async_job("record", job_id="mail", queue="emails")
    app.scheduler.pause_job("later")
    collector, _ = _store_collector(app, Ticker())

    samples = _samples(collector)

    def jobs(queue, state):
        return samples[("pyncette_jobs", (("queue", queue), ("state", state)))]

    assert (jobs("default", "scheduled"), jobs("default", "paused")) == (1, 1)
    assert (jobs("default", "running"), jobs("emails", "scheduled")) == (0, 1)
    assert samples[("pyncette_oldest_due_seconds", (("queue", "default"),))] == 30
    assert samples[("pyncette_oldest_due_seconds", (("queue", "emails"),))] == 0
    assert len([key for key in samples if key[0] == "pyncette_jobs"]) == 10  # 2 queues x 5 states


def test_store_gauges_count_the_store_at_most_once_per_cache_period(app):
    app.scheduler.add_async_job("record", job_id="one")
    ticker = Ticker()
    collector, calls = _store_collector(app, ticker)

    first = _samples(collector)
    app.scheduler.add_async_job("record", job_id="two")
    ticker.now = 4.9
    assert _samples(collector) == first
    assert len(calls) == 1

    ticker.now = 5.0
    assert (
        _samples(collector)[("pyncette_jobs", (("queue", "default"), ("state", "scheduled")))] == 2
    )
    assert len(calls) == 2


def test_store_gauges_are_left_out_while_the_store_cannot_be_counted(app, caplog):
    ticker = Ticker()
    collector, _ = _store_collector(app, ticker)
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("store down")

    app.scheduler.get_queues = down

    assert _samples(collector) == {}
    assert _samples(collector) == {}
    assert len(calls) == 1  # a store that is down is not asked by every scrape
    assert "cannot count the jobs of the store" in caplog.text


def test_store_metrics_is_an_exposition_of_the_store_wide_gauges(app):
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.parser import text_string_to_metric_families

    from pyramid_pyncette.metrics import store_metrics

    app.scheduler.add_async_job("record", job_id="one", queue="emails")

    body, content_type = store_metrics(app.scheduler)

    assert content_type == CONTENT_TYPE_LATEST
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert set(families) == {"pyncette_jobs", "pyncette_oldest_due_seconds"}
    scheduled = [
        sample.value
        for sample in families["pyncette_jobs"].samples
        if sample.labels == {"queue": "emails", "state": "scheduled"}
    ]
    assert scheduled == [1]


def test_store_metrics_share_one_cache_between_the_copies_of_a_scheduler(app):
    import transaction

    from pyramid_pyncette.metrics import store_metrics

    calls = []
    repository = app.scheduler.repository
    original = repository.queue_stats

    def counted(now):
        calls.append(now)
        return original(now)

    repository.queue_stats = counted
    store_metrics(app.scheduler)
    store_metrics(app.scheduler.bind(transaction.TransactionManager()))

    assert len(calls) == 1


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def served(app):
    """A metrics server on a free port for a worker with metrics: ``(server, loop, metrics)``."""
    from pyramid_pyncette.metrics import HealthCheck, MetricsServer

    loop, metrics = measured_loop(app)
    server = MetricsServer(metrics.registry, HealthCheck(loop.worker), "127.0.0.1", 0)
    server.start()
    yield server, loop, metrics
    server.stop()


def _get(server, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_server_serves_the_daemons_metrics(served):
    server, _, metrics = served
    metrics.claimed(2)

    status, content_type, body = _get(server, "/metrics")

    assert status == 200 and content_type.startswith("text/plain")
    assert "pyncette_claimed_jobs_total 2.0" in body.splitlines()


def test_the_server_answers_healthz_with_200_or_503_and_a_json_body(served, app):
    server, loop, _ = served

    status, content_type, body = _get(server, "/healthz")
    assert (status, content_type, json.loads(body)["status"]) == (
        503,
        "application/json",
        "unhealthy",
    )

    loop.turn()
    status, _, body = _get(server, "/healthz")
    assert (status, json.loads(body)["status"]) == (200, "ok")


def test_the_server_answers_404_elsewhere(served):
    server, _, _ = served

    status, _, body = _get(server, "/")

    assert status == 404 and "/metrics" in body


def test_a_taken_port_is_a_configuration_error_naming_the_setting(app):
    from pyramid_pyncette.metrics import HealthCheck, MetricsServer

    loop, metrics = measured_loop(app)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=r"pyncette\.metrics_port") as raised:
            MetricsServer(metrics.registry, HealthCheck(loop.worker), "127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(raised.value)


@pytest.mark.parametrize("host", ["256.1.1.1", "[::1]", "192.0.2.1"])
def test_a_host_that_is_not_this_machines_is_a_configuration_error_naming_the_host(app, host):
    from pyramid_pyncette.metrics import HealthCheck, MetricsServer

    loop, metrics = measured_loop(app)
    with pytest.raises(ConfigurationError, match=r"pyncette\.metrics_host") as raised:
        MetricsServer(metrics.registry, HealthCheck(loop.worker), host, 0)
    assert "metrics_port" not in str(raised.value)


def test_missing_prometheus_client_names_the_extra_to_install(monkeypatch):
    from pyramid_pyncette.metrics import MetricsUnavailable, require_prometheus

    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    with pytest.raises(MetricsUnavailable, match=r"pip install pyramid_pyncette\[metrics\]"):
        require_prometheus()


# --------------------------------------------------------------------------- pscheduler


def test_pscheduler_without_prometheus_client_stops_at_start_naming_the_fix(
    tmp_path, monkeypatch, capsys
):
    ini, _ = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.metrics_port = 0"
    )
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    assert run_pscheduler("--once", ini) == 2
    err = capsys.readouterr().err
    assert "pip install pyramid_pyncette[metrics]" in err
    assert "Traceback" not in err


def test_pscheduler_without_a_metrics_port_never_imports_prometheus_client(tmp_path, monkeypatch):
    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    add_due_jobs(bootstrap_registry(ini), 3)
    # Any import of it fails: the daemon would stop with status 2.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    assert run_pscheduler("--once", ini) == 0
    assert len(read_runs(records)) == 3


def test_pscheduler_with_a_taken_metrics_port_stops_at_start(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ini, _ = write_ini(
            tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra=f"pyncette.metrics_port = {port}"
        )
        assert run_pscheduler("--once", ini) == 2
    err = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err


def test_check_prints_one_line_and_exits_0_when_the_store_answers(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")

    assert run_pscheduler("--check", ini) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ok: store sqlite:///{tmp_path}/jobs.sqlite reachable, its job table readable"]


def test_check_exits_2_on_bad_configuration(tmp_path, capsys):
    ini, _ = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.poll_interval = soon"
    )

    assert run_pscheduler("--check", ini) == 2
    assert "poll_interval" in capsys.readouterr().err


def test_check_exits_2_when_the_table_is_missing(tmp_path, capsys):
    ini, _ = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.skip_table_create = true"
    )

    assert run_pscheduler("--check", ini) == 2
    assert "table does not exist" in capsys.readouterr().err


def test_check_exits_3_when_the_store_cannot_be_reached(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/missing-dir/jobs.sqlite")

    assert run_pscheduler("--check", ini) == 3
    assert "cannot reach the store" in capsys.readouterr().err


def test_check_exits_2_when_metrics_are_on_without_prometheus_client(tmp_path, monkeypatch, capsys):
    ini, _ = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.metrics_port = 9100"
    )
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    assert run_pscheduler("--check", ini) == 2
    assert "pip install pyramid_pyncette[metrics]" in capsys.readouterr().err


def test_the_server_listens_on_an_ipv6_address(app):
    from pyramid_pyncette.metrics import HealthCheck, MetricsServer

    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    loop, metrics = measured_loop(app)
    try:
        server = MetricsServer(metrics.registry, HealthCheck(loop.worker), "::1", 0)
    except ConfigurationError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=10) as answer:
            pytest.fail(f"healthy before the loop turned: {answer.status}")
    except urllib.error.HTTPError as error:
        assert error.code == 503
    finally:
        server.stop()


def test_stopping_the_server_frees_its_port_without_waiting_for_its_poll(app):
    from pyramid_pyncette.metrics import HealthCheck, MetricsServer

    loop, metrics = measured_loop(app)
    server = MetricsServer(metrics.registry, HealthCheck(loop.worker), "127.0.0.1", 0)
    server.start()
    started = time.perf_counter()
    server.stop()
    took = time.perf_counter() - started

    assert took < 0.4  # the server's own poll would take up to 0.5 s
    with socket.socket() as again:
        again.bind(("127.0.0.1", server.port))

"""The testing include: a recording scheduler over a memory store.

``run_pending`` and ``set_clock`` drive an app's jobs in a test.
"""

from __future__ import annotations

import pytest

from tests.conftest import StoreSettings


def noop(request):
    return None


def _committed(*includes, url="sqlite:///never-created.sqlite"):
    from pyramid.config import Configurator

    config = Configurator(settings={"pyncette.url": url})
    for name in includes:
        config.include(name)
    config.add_pyncette_task(noop, name="noop")
    config.commit()
    return config.registry


def test_testing_include_registers_a_recording_scheduler_over_a_memory_store():
    from pyramid_pyncette.repository.memory import MemoryRepository
    from pyramid_pyncette.testing import RecordingScheduler

    registry = _committed("pyramid_pyncette.testing")

    assert isinstance(registry.scheduler, RecordingScheduler)
    assert isinstance(registry.scheduler.repository, MemoryRepository)
    assert registry.pyncette_settings.url == "memory://"
    assert registry.scheduler.settings is registry.pyncette_settings


def test_testing_include_wins_over_a_later_include_of_pyramid_pyncette():
    from pyramid_pyncette.testing import RecordingScheduler

    registry = _committed("pyramid_pyncette.testing", "pyramid_pyncette")

    assert isinstance(registry.scheduler, RecordingScheduler)
    assert registry.pyncette_settings.url == "memory://"


def test_recording_scheduler_records_what_every_commit_listener_hears():
    registry = _committed("pyramid_pyncette.testing")
    scheduler = registry.scheduler
    heard = []
    scheduler.commit_listeners.append(
        lambda written, removed: heard.append(([job.id for job in written], list(removed)))
    )

    scheduler.add_async_job("noop", job_id="a")
    scheduler.cancel_job("a")

    assert heard == [(["a"], []), ([], ["a"])]
    assert [job.id for job in scheduler.scheduled] == ["a"]
    assert scheduler.cancelled == ["a"]
    scheduler.clear()
    assert scheduler.scheduled == []
    assert scheduler.cancelled == []


def _ticking_app(make_config, interval):
    """A testing-include app with one periodic task ``tick``: its registry, clock and runs."""
    from pyramid_pyncette.testing import FakeClock, set_clock

    runs = []
    config = make_config({}, include=["pyramid_pyncette.testing"])
    config.add_pyncette_task(
        lambda request: runs.append(request.job.scheduled_at), name="tick", interval=interval
    )
    config.commit()
    registry = config.registry
    return registry, set_clock(registry, FakeClock()), runs


def test_run_pending_writes_periodic_jobs_like_a_starting_daemon(make_config):
    from pyramid_pyncette.testing import run_pending

    registry, clock, runs = _ticking_app(make_config, "1h")
    assert run_pending(registry) == 0  # its first run is an hour away
    clock.advance(hours=1)
    assert run_pending(registry) == 1
    assert runs == [clock()]


def test_run_pending_of_the_testing_include_runs_periodic_tasks_by_itself(make_config):
    from datetime import timedelta

    from pyramid_pyncette import PeriodicJobError
    from pyramid_pyncette.testing import run_pending

    registry, clock, runs = _ticking_app(make_config, "30s")
    start = clock()
    assert run_pending(registry) == 0  # writes the job: its first run is 30 s away

    total = 0
    for _ in range(60):  # five minutes, in steps of 5 s
        clock.advance(5)
        total += run_pending(registry)

    assert total == 10
    assert runs == [start + timedelta(seconds=30 * n) for n in range(1, 11)]
    with pytest.raises(PeriodicJobError):
        registry.scheduler.cancel_job("tick")


def test_set_clock_lets_a_fake_time_decide_what_is_due_on_every_store(
    make_config, store_settings: StoreSettings
):
    from datetime import timedelta

    from pyramid_pyncette.testing import FakeClock, run_pending, set_clock

    runs = []
    config = make_config(store_settings)
    config.add_pyncette_task(lambda request: runs.append(request.job.id), name="once")
    config.commit()
    registry = config.registry
    try:
        clock = set_clock(registry, FakeClock())  # years ahead of any server's clock
        registry.scheduler.add_date_job("once", clock() + timedelta(hours=1), job_id="later")
        assert run_pending(registry) == 0
        clock.advance(hours=1)
        assert run_pending(registry) == 1
        assert runs == ["later"]
    finally:
        registry.scheduler.repository.close()


def test_run_pending_of_the_testing_include_records_each_run(make_config):
    from pyramid_pyncette.testing import run_pending

    registry, clock, runs = _ticking_app(make_config, "30s")
    run_pending(registry)
    clock.advance(30)
    assert run_pending(registry) == 1
    clock.advance(30)
    assert run_pending(registry) == 1

    records = list(registry.scheduler.repository.list_runs())
    assert [(r.job_id, r.outcome, r.attempt, r.started_at) for r in records] == [
        ("tick", "succeeded", 1, runs[1]),
        ("tick", "succeeded", 1, runs[0]),
    ]


def test_run_pending_of_the_testing_include_claims_only_the_configured_queues(make_config):
    from pyramid_pyncette.testing import run_pending

    ran = []
    config = make_config({"pyncette.queues": "emails"}, include=["pyramid_pyncette.testing"])
    config.add_pyncette_task(lambda request: ran.append(request.job.id), name="note")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_async_job("note", job_id="plain")
    scheduler.add_async_job("note", job_id="mail", queue="emails")

    assert run_pending(config.registry) == 1
    assert ran == ["mail"]

"""Queues in the daemon: a worker claims only the queues it serves, never a paused one.

Every test runs on every store through ``make_app`` and the fake clock.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest

from pyramid_pyncette.settings import parse_settings
from pyramid_pyncette.worker import Worker
from tests.test_worker_leases import HeldThreads, Loop, counting


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def add_job(app, job_id, queue="default", at=None):
    """Add a one-off ``record`` job in ``queue``, due at ``at`` (default: now)."""
    when = app.clock() if at is None else at
    return app.scheduler.add_date_job("record", when, job_id=job_id, queue=queue)


def use_settings(app, **ini):
    """Give ``app`` the ``pyncette.*`` settings ``ini`` (INI strings) and a new daemon."""
    parsed = parse_settings({f"pyncette.{key}": value for key, value in ini.items()})
    changes = {key: getattr(parsed, key) for key in ini}
    app.scheduler.settings = dataclasses.replace(app.scheduler.settings, **changes)
    app.worker = Worker(app.registry, clock=app.clock)
    return app.worker


def ran(app):
    return sorted(call.job_id for call in app.calls)


# --------------------------------------------------------------------------- serving queues


def test_a_worker_serves_every_queue_by_default(app):
    add_job(app, "plain")
    add_job(app, "mail", queue="emails")

    assert app.worker.queues is None
    assert app.run_pending() == 2
    assert ran(app) == ["mail", "plain"]


def test_a_worker_bound_to_emails_never_runs_a_default_job(make_app):
    app = make_app()
    worker = use_settings(app, queues="emails")
    add_job(app, "plain")
    add_job(app, "mail", queue="emails")

    assert worker.queues == frozenset({"emails"})
    assert app.run_pending() == 1
    worker.run(until_idle=True)
    app.clock.advance(3600)
    assert app.run_pending() == 0

    assert ran(app) == ["mail"]
    stored = app.scheduler.get_job("plain")
    assert stored is not None and stored.state == "scheduled" and stored.attempts == 0


def test_the_daemon_loop_claims_only_its_queues(make_app):
    app = make_app()
    worker = use_settings(app, queues="emails reports")
    for i in range(3):
        add_job(app, f"plain-{i}")
        add_job(app, f"mail-{i}", queue="emails")
        add_job(app, f"report-{i}", queue="reports")
    claims = counting(app.repository, "complete_and_claim")

    worker.run(until_idle=True)

    assert ran(app) == [f"mail-{i}" for i in range(3)] + [f"report-{i}" for i in range(3)]
    assert {call[5] for call in claims} == {frozenset({"emails", "reports"})}
    assert [job.id for job in app.scheduler.get_jobs()] == [f"plain-{i}" for i in range(3)]


def test_two_workers_on_two_queues_drain_both(make_app):
    app = make_app()
    for i in range(4):
        add_job(app, f"plain-{i}")
        add_job(app, f"mail-{i}", queue="emails")
    default = Worker(app.registry, clock=app.clock, queues=["default"])
    emails = Worker(app.registry, clock=app.clock, queues=["emails"])

    threads = [
        threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in (default, emails)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not any(thread.is_alive() for thread in threads)
    assert ran(app) == [f"mail-{i}" for i in range(4)] + [f"plain-{i}" for i in range(4)]
    assert (default.stats["succeeded"], emails.stats["succeeded"]) == (4, 4)
    assert list(app.scheduler.get_jobs()) == []


def test_a_queues_argument_overrides_the_setting(make_app):
    app = make_app()
    use_settings(app, queues="emails")
    add_job(app, "plain")
    add_job(app, "mail", queue="emails")
    worker = Worker(app.registry, clock=app.clock, queues=["default"])

    assert worker.queues == frozenset({"default"})
    assert worker.run_pending() == 1
    assert ran(app) == ["plain"]


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ([], "queues names no queue"),
        (["emails", "bad name"], "'bad name' is not a queue name"),
    ],
)
def test_a_bad_queues_argument_is_refused_with_the_fix(app, queues, message):
    with pytest.raises(ValueError, match=message):
        Worker(app.registry, queues=queues)


# --------------------------------------------------------------------------- paused queues


def test_a_paused_queue_is_not_claimed_until_it_is_resumed(make_app):
    app = make_app()
    add_job(app, "plain")
    add_job(app, "mail", queue="emails")
    app.scheduler.pause_queue("emails")
    loop = Loop(app, poll_interval=2)

    loop.run_for(10, finish={"plain": 0, "mail": 0})
    assert ran(app) == ["plain"]
    assert app.scheduler.get_job("mail").state == "scheduled"

    app.scheduler.resume_queue("emails")
    resumed = app.clock()
    loop.run_for(3, finish={"mail": 0})

    assert ran(app) == ["mail", "plain"]
    (mail,) = [call for call in app.calls if call.job_id == "mail"]
    # Claimed within one poll interval of the resume, with no wake-up (and run
    # at the harness's next step).
    assert resumed < mail.at <= resumed + seconds(2 + 0.1)


def test_a_paused_queue_is_not_claimed_by_run_pending(app):
    add_job(app, "mail", queue="emails")
    app.scheduler.pause_queue("emails")

    assert app.run_pending() == 0

    app.scheduler.resume_queue("emails")
    assert app.run_pending() == 1
    assert ran(app) == ["mail"]


def test_the_loop_sleeps_normally_when_only_a_paused_queue_has_due_jobs(make_app):
    app = make_app()
    add_job(app, "mail", queue="emails", at=app.clock() - seconds(30))
    add_job(app, "plain", at=app.clock() + seconds(10))
    app.scheduler.pause_queue("emails")
    worker = Worker(app.registry, clock=app.clock, poll_interval=60)

    # The overdue job of the paused queue does not count: the next due one is in 10 s
    # (less the lead of a store that claims ahead of due times).
    assert worker._cycle(HeldThreads()) == 10.0 - worker._claim_lead()


def test_the_loop_waits_for_its_own_queues_not_for_others(make_app):
    app = make_app()
    add_job(app, "plain", at=app.clock() - seconds(30))
    add_job(app, "mail", queue="emails", at=app.clock() + seconds(10))
    worker = Worker(app.registry, clock=app.clock, poll_interval=60, queues=["emails"])

    # An overdue job of a queue this worker does not serve must not make it spin.
    assert worker._cycle(HeldThreads()) == 10.0 - worker._claim_lead()
    assert worker._until_next_due() == 10.0 - worker._claim_lead()


# --------------------------------------------------------------------------- combined mode


def test_combined_mode_serves_the_queues_of_the_setting(make_config, store_settings):
    from pyramid_pyncette.server import start_worker, stop_worker

    done = threading.Event()
    ran_ids = []

    def mail(request):
        ran_ids.append(request.job.id)
        done.set()

    config = make_config({**store_settings, "pyncette.queues": "emails"})
    config.add_pyncette_task(mail, name="mail")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_async_job("mail", job_id="plain")
    scheduler.add_async_job("mail", job_id="mail", queue="emails")

    worker, thread = start_worker(config.registry)
    try:
        assert done.wait(30)
    finally:
        stop_worker(worker, thread)
        scheduler.repository.close()

    assert worker.queues == frozenset({"emails"})
    assert ran_ids == ["mail"]
    assert [job.id for job in scheduler.get_jobs()] == ["plain"]

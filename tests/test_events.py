"""Events: the one helper that notifies subscribers and logs the one that raises."""

import logging

import pytest


class Happened:
    pass


def _registry_with(subscriber):
    from pyramid.registry import Registry

    registry = Registry("test")
    registry.registerHandler(subscriber, (Happened,))
    return registry


def test_notify_subscribers_delivers_the_event():
    from pyramid_pyncette.events import notify_subscribers

    seen = []
    event = Happened()
    notify_subscribers(_registry_with(seen.append), event, logging.getLogger("x"), "it goes on")
    assert seen == [event]


@pytest.mark.parametrize(
    ("logger", "goes_on"),
    [
        ("pyramid_pyncette.scheduler", "ignored"),
        ("pyramid_pyncette.worker", "the worker goes on"),
        ("pyramid_pyncette.execution", "the job goes on"),
    ],
)
def test_a_subscriber_that_raises_is_logged_on_the_callers_logger_and_not_raised(
    caplog, logger, goes_on
):
    from pyramid_pyncette.events import notify_subscribers

    def broken(event):
        raise RuntimeError("subscriber bug")

    with caplog.at_level("ERROR"):
        notify_subscribers(_registry_with(broken), Happened(), logging.getLogger(logger), goes_on)

    (record,) = caplog.records
    assert record.name == logger
    assert record.levelname == "ERROR"
    assert record.getMessage() == f"a subscriber to Happened raised; {goes_on}"
    assert record.exc_info[0] is RuntimeError


def test_a_registry_without_notify_has_no_subscribers(caplog):
    from pyramid_pyncette.events import notify_subscribers

    with caplog.at_level("DEBUG"):
        notify_subscribers(object(), Happened(), logging.getLogger("x"), "it goes on")
    assert caplog.records == []


def test_job_paused_and_resumed_carry_the_job_and_registry_and_provide_their_interfaces():
    from pyramid_pyncette import IJobPaused, IJobResumed, JobPaused, JobResumed
    from pyramid_pyncette.events import IJobEvent
    from pyramid_pyncette.jobs import Job

    job, registry = Job(id="j", task="t", schedule={"kind": "date"}), object()
    for kind, interface, other in (
        (JobPaused, IJobPaused, IJobResumed),
        (JobResumed, IJobResumed, IJobPaused),
    ):
        event = kind(job, registry)
        assert (event.job, event.registry) == (job, registry)
        assert interface.providedBy(event) and IJobEvent.providedBy(event)
        assert not other.providedBy(event)


def test_queue_paused_and_resumed_carry_the_name_and_registry_and_provide_their_interfaces():
    from pyramid_pyncette import IQueuePaused, IQueueResumed, QueuePaused, QueueResumed
    from pyramid_pyncette.events import IJobEvent, IQueueEvent

    registry = object()
    for kind, interface in ((QueuePaused, IQueuePaused), (QueueResumed, IQueueResumed)):
        event = kind("emails", registry)
        assert (event.name, event.registry) == ("emails", registry)
        assert interface.providedBy(event) and IQueueEvent.providedBy(event)
        assert not IJobEvent.providedBy(event)


def test_a_subscriber_to_job_paused_hears_it_through_registry_notify():
    from pyramid.registry import Registry

    from pyramid_pyncette import IJobPaused, JobPaused, JobScheduled
    from pyramid_pyncette.events import notify_subscribers
    from pyramid_pyncette.jobs import Job

    registry = Registry("test")
    seen = []
    registry.registerHandler(seen.append, (IJobPaused,))
    job = Job(id="j", task="t", schedule={"kind": "date"})
    log = logging.getLogger("x")
    notify_subscribers(registry, JobScheduled(job, registry), log, "ignored")
    notify_subscribers(registry, JobPaused(job, registry), log, "ignored")
    assert [type(event) for event in seen] == [JobPaused]

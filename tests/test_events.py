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

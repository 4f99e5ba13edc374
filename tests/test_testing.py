"""The testing include: a recording scheduler over a memory store."""


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

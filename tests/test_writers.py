"""The write path seam: one store per app, a scheduler composing a writer, bound copies."""

from datetime import datetime, timezone

import pytest
import transaction

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def noop(request):
    return None


@pytest.fixture
def registry(make_config):
    from pyramid_pyncette.testing import FakeClock

    config = make_config()
    config.add_pyncette_task(noop, name="noop")
    config.commit()
    config.registry.scheduler.clock = FakeClock(NOW)
    return config.registry


def _begun():
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    return tm


def _recorder(scheduler):
    calls = []
    scheduler.commit_listeners.append(lambda written, removed: calls.append((written, removed)))
    return calls


# --------------------------------------------------------------------------- one store


def test_the_store_is_built_once_at_include_and_never_by_binding(monkeypatch, make_config):
    import pyramid_pyncette.scheduler as scheduler_module

    built = []
    original = scheduler_module.create_repository

    def counting(settings):
        built.append(settings.url)
        return original(settings)

    monkeypatch.setattr(scheduler_module, "create_repository", counting)
    config = make_config()
    config.add_pyncette_task(noop, name="noop")
    config.commit()
    scheduler = config.registry.scheduler
    assert built == ["memory://"]

    bound = scheduler.bind(_begun())
    bound.add_async_job("noop", job_id="one")
    assert bound.repository is scheduler.repository
    assert built == ["memory://"]


def test_from_settings_rejects_an_unknown_store_without_showing_the_password():
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.scheduler import Scheduler
    from pyramid_pyncette.settings import PyncetteSettings

    settings = PyncetteSettings(url="nosuchstore://user:secret@host/db")
    with pytest.raises(ConfigurationError) as info:
        Scheduler.from_settings(None, settings)
    assert "nosuchstore" in str(info.value)
    assert "secret" not in str(info.value)


# --------------------------------------------------------------------------- bound copies


def test_bind_returns_a_scheduler_with_a_transaction_writer_and_the_same_store(registry):
    from pyramid_pyncette import BoundScheduler, Scheduler
    from pyramid_pyncette.writers import ImmediateWriter, SessionWriter, StagedWriter

    scheduler = registry.scheduler
    tm = _begun()
    bound = scheduler.bind(tm)

    assert type(bound) is Scheduler
    assert BoundScheduler is Scheduler
    assert isinstance(scheduler.writer, ImmediateWriter)
    assert isinstance(bound.writer, StagedWriter)
    assert bound.writer.transaction_manager is tm
    assert isinstance(scheduler.bind(tm, session=object()).writer, SessionWriter)
    assert bound.repository is scheduler.repository
    assert bound.registry is scheduler.registry
    assert bound.settings is scheduler.settings
    tm.abort()


def test_a_bound_copy_follows_the_clock_and_listeners_set_on_its_parent(registry):
    from pyramid_pyncette.testing import FakeClock

    scheduler = registry.scheduler
    bound = scheduler.bind(_begun())
    later = FakeClock(datetime(2031, 6, 1, tzinfo=timezone.utc))
    scheduler.clock = later
    wakes = []
    scheduler.wake_listeners.append(lambda: wakes.append(1))

    assert bound.now() == later()
    assert bound.wake_listeners is scheduler.wake_listeners
    assert bound.commit_listeners is scheduler.commit_listeners
    bound.writer.transaction_manager.commit()
    assert wakes == []


def test_binding_a_bound_scheduler_binds_to_the_new_transaction(registry):
    first, second = _begun(), _begun()
    rebound = registry.scheduler.bind(first).bind(second)

    rebound.add_async_job("noop", job_id="in-second")
    first.commit()
    assert registry.scheduler.get_job("in-second") is None
    second.commit()
    assert registry.scheduler.get_job("in-second") is not None


# --------------------------------------------------------------------------- commit listeners


def test_commit_listeners_hear_immediate_writes_and_deletes_at_once(registry):
    scheduler = registry.scheduler
    calls = _recorder(scheduler)

    job = scheduler.add_async_job("noop", job_id="now")
    assert scheduler.cancel_job("now") is True
    assert scheduler.cancel_job("never-existed") is False

    assert calls == [([job], []), ([], ["now"])]


def test_commit_listeners_hear_a_bound_scheduler_only_after_commit(registry):
    scheduler = registry.scheduler
    scheduler.add_async_job("noop", job_id="old")
    calls = _recorder(scheduler)
    tm = _begun()
    bound = scheduler.bind(tm)

    job = bound.add_async_job("noop", job_id="new")
    assert bound.cancel_job("old") is True
    assert calls == []
    tm.commit()

    assert [([j.id for j in written], list(removed)) for written, removed in calls] == [
        (["new"], ["old"])
    ]
    assert calls[0][0][0].id == job.id


def test_commit_listeners_hear_nothing_of_an_aborted_transaction(registry):
    scheduler = registry.scheduler
    calls = _recorder(scheduler)
    tm = _begun()

    scheduler.bind(tm).add_async_job("noop", job_id="dropped")
    tm.abort()

    assert calls == []
    assert scheduler.get_job("dropped") is None


def test_a_commit_listener_that_raises_is_logged_and_the_write_stands(registry, caplog):
    scheduler = registry.scheduler

    def broken(written, removed):
        raise RuntimeError("listener bug")

    scheduler.commit_listeners.append(broken)
    calls = _recorder(scheduler)

    with caplog.at_level("ERROR", logger="pyramid_pyncette.scheduler"):
        scheduler.add_async_job("noop", job_id="kept")

    assert scheduler.get_job("kept") is not None
    assert [[j.id for j in written] for written, _removed in calls] == [["kept"]]
    assert "a scheduler commit listener raised; ignored" in caplog.text


# --------------------------------------------------------------------------- the data manager alone


def _data_manager(repository, txn, calls):
    from pyramid_pyncette.transaction import StagingDataManager

    return StagingDataManager(
        repository,
        lambda written, removed: calls.append((list(written), list(removed))),
        txn,
        window=60.0,
        clock=lambda: NOW,
    )


def _job(job_id):
    from pyramid_pyncette.jobs import Job
    from pyramid_pyncette.schedules import DateSchedule

    return Job(
        id=job_id,
        task="noop",
        schedule=DateSchedule(NOW).to_json(),
        args=[],
        kwargs={},
        options={},
        due_at=NOW,
        next_run_at=NOW,
        created_at=NOW,
    )


def test_the_data_manager_writes_to_a_bare_repository_and_calls_back_after_commit():
    from pyramid_pyncette.repository.memory import MemoryRepository

    repository = MemoryRepository()
    repository.add([_job("old")])
    calls = []
    tm = _begun()
    data_manager = _data_manager(repository, tm.get(), calls)
    tm.get().join(data_manager)

    data_manager.add([_job("new")])
    data_manager.remove("old")
    tm.commit()

    assert [(written[0].id, removed) for written, removed in calls] == [("new", ["old"])]
    stored = repository.get("new")
    assert stored is not None and stored.locked_by is None
    assert repository.get("old") is None


def test_the_data_manager_leaves_a_bare_repository_untouched_after_abort():
    from pyramid_pyncette.repository.memory import MemoryRepository

    repository = MemoryRepository()
    calls = []
    tm = _begun()
    data_manager = _data_manager(repository, tm.get(), calls)
    tm.get().join(data_manager)

    data_manager.add([_job("new")])
    tm.abort()

    assert calls == []
    assert repository.get("new") is None

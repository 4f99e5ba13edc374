import functools
import threading
import warnings

import pytest

MEMORY = {"pyncette.url": "memory://"}


@pytest.fixture
def make_config(make_config):
    """The shared configurator factory without the include: these tests include it themselves."""
    return functools.partial(make_config, include=())


@pytest.fixture
def config(make_config):
    config = make_config(MEMORY)
    config.include("pyramid_pyncette")
    config.commit()  # the settings are read, and the scheduler built, at commit
    return config


def _include_error(make_config, settings):
    from pyramid.exceptions import ConfigurationError

    config = make_config(settings)
    config.include("pyramid_pyncette")
    with pytest.raises(ConfigurationError) as excinfo:
        config.commit()
    return str(excinfo.value)


def _some_task(request):
    return "done"


# --------------------------------------------------------------------------- what is registered


def test_include_registers_a_scheduler_on_the_registry(config):
    from pyramid_pyncette import Scheduler

    config.commit()
    scheduler = config.registry.scheduler
    assert isinstance(scheduler, Scheduler)
    assert scheduler.registry is config.registry
    assert scheduler.settings is config.registry.pyncette_settings


def test_include_registers_parsed_settings(make_config):
    from pyramid_pyncette import PyncetteSettings

    config = make_config(
        {
            "pyncette.url": "memory://",
            "pyncette.batch_size": "7",
            "pyncette.lease_duration": "5m",
            "pyncette.timezone": "Europe/Ljubljana",
            "pyncette.skip_table_create": "yes",
        }
    )
    config.include("pyramid_pyncette")
    config.commit()
    settings = config.registry.pyncette_settings
    assert isinstance(settings, PyncetteSettings)
    assert settings.batch_size == 7
    assert settings.lease_duration == 300.0
    assert settings.timezone == "Europe/Ljubljana"
    assert settings.skip_table_create is True
    assert settings.url == "memory://"


def test_include_without_pyncette_settings_uses_defaults(make_config):
    from pyramid_pyncette.settings import PyncetteSettings

    config = make_config({})
    config.include("pyramid_pyncette")
    config.commit()
    assert config.registry.pyncette_settings == PyncetteSettings()


def test_include_adds_the_add_pyncette_task_directive(config):
    config.add_pyncette_task(_some_task, name="some-task")
    config.commit()
    task = config.registry.scheduler.tasks.get("some-task")
    assert task is not None
    assert task.func is _some_task


def test_directive_is_missing_without_the_include(make_config):
    config = make_config(MEMORY)
    with pytest.raises(AttributeError):
        config.add_pyncette_task(_some_task)


def test_included_scheduler_can_add_and_read_jobs(config):
    config.add_pyncette_task(_some_task)
    config.commit()
    scheduler = config.registry.scheduler
    job = scheduler.add_async_job(_some_task)
    assert scheduler.get_job(job.id) == job


# --------------------------------------------------------------------------- bad settings


def test_bad_integer_setting_raises_configuration_error_naming_the_key(make_config):
    message = _include_error(make_config, {"pyncette.url": "memory://", "pyncette.batch_size": "x"})
    assert "pyncette.batch_size" in message
    assert "'x'" in message
    assert "whole number" in message


def test_unsupported_store_scheme_raises_naming_scheme_and_allowed_ones(make_config):
    message = _include_error(make_config, {"pyncette.url": "ftp://x"})
    assert "pyncette.url" in message
    assert "'ftp'" in message
    assert "sqlite:///" in message
    assert "memory://" in message


def test_url_without_scheme_raises_configuration_error(make_config):
    message = _include_error(make_config, {"pyncette.url": "just-a-path.sqlite"})
    assert "pyncette.url" in message
    assert "scheme" in message


def test_unknown_timezone_raises_configuration_error_naming_the_key(make_config):
    message = _include_error(
        make_config, {"pyncette.url": "memory://", "pyncette.timezone": "Mars/Base"}
    )
    assert "pyncette.timezone" in message
    assert "Mars/Base" in message
    assert "IANA" in message


def test_bad_duration_raises_configuration_error_naming_the_key(make_config):
    message = _include_error(
        make_config, {"pyncette.url": "memory://", "pyncette.poll_interval": "soon"}
    )
    assert "pyncette.poll_interval" in message
    assert "'30s'" in message


def test_bad_setting_leaves_no_scheduler_behind(make_config):
    from pyramid.exceptions import ConfigurationError

    config = make_config({"pyncette.url": "memory://", "pyncette.batch_size": "0"})
    config.include("pyramid_pyncette")
    with pytest.raises(ConfigurationError):
        config.commit()
    assert getattr(config.registry, "scheduler", None) is None


def test_unknown_setting_warns_and_suggests_the_close_key(make_config):
    from pyramid_pyncette.settings import UnknownSettingWarning

    config = make_config({"pyncette.url": "memory://", "pyncette.batchsize": "7"})
    with pytest.warns(UnknownSettingWarning) as record:
        config.include("pyramid_pyncette")
        config.commit()
    messages = [str(w.message) for w in record]
    assert any("pyncette.batchsize" in m and "pyncette.batch_size" in m for m in messages)
    assert config.registry.pyncette_settings.batch_size == 100


def test_known_settings_do_not_warn(make_config):
    config = make_config({"pyncette.url": "memory://", "pyncette.batch_size": "7"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.include("pyramid_pyncette")
        config.commit()


def test_non_pyncette_settings_are_ignored(make_config):
    config = make_config({"pyncette.url": "memory://", "sqlalchemy.url": "sqlite://"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.include("pyramid_pyncette")
        config.commit()
    assert config.registry.pyncette_settings.url == "memory://"


def test_settings_added_after_the_include_count(make_config):
    config = make_config({"pyncette.url": "memory://"})
    config.include("pyramid_pyncette")
    config.add_settings({"pyncette.batch_size": "7", "pyncette.timezone": "Europe/Ljubljana"})
    config.commit()
    settings = config.registry.pyncette_settings
    assert settings.batch_size == 7
    assert settings.timezone == "Europe/Ljubljana"
    assert config.registry.scheduler.settings is settings


def test_a_bad_setting_added_after_the_include_is_an_error_at_commit(make_config):
    from pyramid.exceptions import ConfigurationError

    config = make_config(MEMORY)
    config.include("pyramid_pyncette")
    config.add_settings({"pyncette.batch_size": "x"})
    with pytest.raises(ConfigurationError) as excinfo:
        config.commit()
    assert "pyncette.batch_size" in str(excinfo.value)
    assert "whole number" in str(excinfo.value)


def test_an_autocommitting_configurator_raises_a_bad_setting_at_the_include():
    from pyramid import testing
    from pyramid.exceptions import ConfigurationError

    config = testing.setUp(settings={"pyncette.url": "memory://", "pyncette.batch_size": "x"})
    try:
        with pytest.raises(ConfigurationError) as excinfo:
            config.include("pyramid_pyncette")
    finally:
        testing.tearDown()
    assert str(excinfo.value).startswith("pyncette.batch_size: 'x' is not a whole number")


def test_tasks_registered_before_the_include_commits_find_the_scheduler(make_config):
    config = make_config(MEMORY)
    config.include("pyramid_pyncette")
    config.add_pyncette_task(_some_task, name="early")
    config.commit()
    assert config.registry.scheduler.tasks.get("early").func is _some_task


def test_the_testing_include_swaps_in_a_recording_scheduler_at_commit(make_config):
    from pyramid_pyncette.testing import RecordingScheduler

    config = make_config({"pyncette.url": "sqlite:///never-created.sqlite"})
    config.include("pyramid_pyncette")
    config.include("pyramid_pyncette.testing")
    config.add_settings({"pyncette.batch_size": "7"})
    config.commit()
    registry = config.registry
    assert isinstance(registry.scheduler, RecordingScheduler)
    assert registry.pyncette_settings.url == "memory://"
    assert registry.pyncette_settings.batch_size == 7
    assert registry.scheduler.settings is registry.pyncette_settings


# --------------------------------------------------------------------------- no side effects


def test_include_starts_no_thread(make_config):
    before = threading.active_count()
    config = make_config(MEMORY)
    config.include("pyramid_pyncette")
    config.add_pyncette_task(_some_task)
    config.commit()
    assert threading.active_count() == before


def test_include_creates_no_sqlite_file(make_config, tmp_path):
    config = make_config({"pyncette.url": f"sqlite:///{tmp_path}/x.sqlite"})
    config.include("pyramid_pyncette")
    config.add_pyncette_task(_some_task)
    config.commit()
    assert not (tmp_path / "x.sqlite").exists()
    assert list(tmp_path.iterdir()) == []


def test_sqlite_store_is_created_on_first_use(make_config, tmp_path):
    config = make_config({"pyncette.url": f"sqlite:///{tmp_path}/x.sqlite"})
    config.include("pyramid_pyncette")
    config.add_pyncette_task(_some_task)
    config.commit()
    scheduler = config.registry.scheduler
    try:
        job = scheduler.add_async_job(_some_task)
        assert (tmp_path / "x.sqlite").exists()
        assert scheduler.get_job(job.id).task == job.task
    finally:
        scheduler.repository.close()


def test_missing_database_driver_is_a_configuration_error_without_connecting(make_config):
    message = _include_error(
        make_config, {"pyncette.url": "postgresql+nosuchdriver://user:secret@db.invalid/app"}
    )
    assert "pyncette.url" in message
    assert "secret" not in message


# --------------------------------------------------------------------------- get_scheduler


def test_get_scheduler_from_registry(config):
    from pyramid_pyncette import get_scheduler

    assert get_scheduler(config.registry) is config.registry.scheduler


def test_get_scheduler_from_request(config):
    from pyramid.request import Request

    from pyramid_pyncette import get_scheduler

    request = Request.blank("/")
    request.registry = config.registry
    assert get_scheduler(request) is config.registry.scheduler


def test_get_scheduler_prefers_the_request_scheduler(config):
    from pyramid.request import Request

    from pyramid_pyncette import get_scheduler

    request = Request.blank("/")
    request.registry = config.registry
    bound = object()
    request.scheduler = bound
    assert get_scheduler(request) is bound


def test_get_scheduler_without_include_raises_configuration_error():
    from pyramid.exceptions import ConfigurationError
    from pyramid.registry import Registry

    from pyramid_pyncette import get_scheduler

    with pytest.raises(ConfigurationError) as excinfo:
        get_scheduler(Registry("no-pyncette"))
    assert "config.include('pyramid_pyncette')" in str(excinfo.value)


def test_get_scheduler_from_request_without_include_raises_configuration_error(make_config):
    from pyramid.exceptions import ConfigurationError
    from pyramid.request import Request

    from pyramid_pyncette import get_scheduler

    config = make_config(MEMORY)
    config.commit()
    request = Request.blank("/")
    request.registry = config.registry
    with pytest.raises(ConfigurationError) as excinfo:
        get_scheduler(request)
    assert "config.include" in str(excinfo.value)

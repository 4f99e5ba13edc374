import inspect
import sys
from datetime import datetime, timedelta, timezone

import pytest

SEND_MAIL = "tests.scanpkg.jobs:send_mail"
EVERY_FIVE = "tests.scanpkg.jobs:every_five_minutes"
BUILD_REPORT = "tests.scanpkg.sub.reports:build_report"
START = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _tasks(config):
    from pyramid_pyncette.tasks import get_task_registry

    return get_task_registry(config.registry)


def _makeRegistry(*tasks):
    from pyramid_pyncette.tasks import TaskRegistry

    registry = TaskRegistry()
    for task in tasks:
        registry.add(task)
    return registry


def _makeTask(func, **kw):
    from pyramid_pyncette.tasks import make_task

    return make_task(func, **kw)


def module_level_task(request):
    return "module level"


def another_task(request):
    return "another"


def unregistered(request):
    return "never registered"


async def async_task(request):
    return "async"


class DummyVenusianInfo:
    scope = "module"
    module = sys.modules[__name__]
    codeinfo = ("filename", 1, "function", "source")


class DummyVenusian:
    def __init__(self):
        self.info = DummyVenusianInfo()
        self.attachments = []

    def attach(self, wrapped, callback, category=None, depth=1):
        self.attachments.append((wrapped, callback, category, depth))
        return self.info


class DummyVenusianContext:
    def __init__(self, config):
        self.config = config


def _decorate(decorator, func):
    """Apply ``decorator`` with a dummy venusian; return (result, dummy venusian)."""
    venusian = DummyVenusian()
    decorator.venusian = venusian
    return decorator(func), venusian


# --------------------------------------------------------------------------- scanning


def test_scan_finds_task_and_periodic_task_decorators(config):
    from tests.scanpkg import jobs
    from tests.scanpkg.sub import reports

    config.scan("tests.scanpkg")
    config.commit()
    tasks = _tasks(config)
    assert sorted(task.name for task in tasks) == sorted(
        [SEND_MAIL, "mail.cleanup", EVERY_FIVE, "heartbeat", BUILD_REPORT]
    )
    assert tasks.get(SEND_MAIL).func is jobs.send_mail
    assert tasks.get(BUILD_REPORT).func is reports.build_report
    assert tasks.get(BUILD_REPORT).is_async


def test_scan_ignores_undecorated_functions(config):
    config.scan("tests.scanpkg")
    config.commit()
    names = {task.name for task in _tasks(config)}
    assert "tests.scanpkg.jobs:undecorated_helper" not in names
    assert "tests.scanpkg.plain:not_decorated" not in names


def test_scan_registers_nothing_until_commit(config):
    config.scan("tests.scanpkg")
    assert len(_tasks(config)) == 0
    config.commit()
    assert len(_tasks(config)) == 5


def test_scan_with_another_category_finds_no_task(config):
    config.scan("tests.scanpkg", categories=("other",))
    config.commit()
    assert len(_tasks(config)) == 0


def test_decorators_attach_in_the_pyramid_category():
    from pyramid_pyncette import periodic_task, task

    for decorator in (task(), periodic_task(interval="1m")):
        _, venusian = _decorate(decorator, module_level_task)
        assert [a[2] for a in venusian.attachments] == ["pyramid"]


def test_decorator_returns_the_function_unchanged():
    from tests.scanpkg import jobs

    assert jobs.send_mail(None, "bob", subject="hi") == "mail to bob: hi"


def test_scanned_decorator_options_are_kept(config):
    config.scan("tests.scanpkg")
    config.commit()
    tasks = _tasks(config)
    assert tasks.get("mail.cleanup").options == {"failure_mode": "unlock"}
    heartbeat = tasks.get("heartbeat")
    assert heartbeat.interval == timedelta(seconds=30)
    assert heartbeat.cron is None
    assert heartbeat.options == {"execution_mode": "at_most_once"}
    every_five = tasks.get(EVERY_FIVE)
    assert every_five.cron == "*/5 * * * *"
    assert every_five.interval is None
    assert every_five.periodic
    assert not tasks.get(SEND_MAIL).periodic


def test_scanned_periodic_tasks_get_a_job_each_on_sync(config):
    from pyramid_pyncette.testing import FakeClock

    config.scan("tests.scanpkg")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.clock = FakeClock(START)
    written = scheduler.sync_periodic_jobs()
    assert sorted(job.id for job in written) == sorted([EVERY_FIVE, "heartbeat"])
    assert scheduler.get_job(EVERY_FIVE).next_run_at == START + timedelta(minutes=5)
    assert scheduler.get_job("heartbeat").next_run_at == START + timedelta(seconds=30)
    assert scheduler.get_job("heartbeat").execution_mode == "at_most_once"
    assert scheduler.sync_periodic_jobs() == []


# --------------------------------------------------------------------------- names


def test_default_task_name_is_module_and_qualname(config):
    config.add_pyncette_task(module_level_task)
    config.commit()
    assert "tests.test_tasks:module_level_task" in _tasks(config)


def test_default_task_name_of_a_nested_function_uses_its_qualname(config):
    def inner(request):
        return None

    config.add_pyncette_task(inner)
    config.commit()
    expected = (
        "tests.test_tasks:"
        "test_default_task_name_of_a_nested_function_uses_its_qualname.<locals>.inner"
    )
    assert _tasks(config).get(expected).func is inner


def test_decorator_name_overrides_the_default(config):
    config.scan("tests.scanpkg")
    config.commit()
    assert "mail.cleanup" in _tasks(config)
    assert "tests.scanpkg.jobs:cleanup" not in _tasks(config)


def test_directive_name_overrides_the_default(config):
    config.add_pyncette_task(module_level_task, name="reports.nightly")
    config.commit()
    tasks = _tasks(config)
    assert tasks.get("reports.nightly").func is module_level_task
    assert "tests.test_tasks:module_level_task" not in tasks


@pytest.mark.parametrize(
    "dotted", ["tests.scanpkg.plain:not_decorated", "tests.scanpkg.plain.not_decorated"]
)
def test_directive_accepts_a_dotted_name(config, dotted):
    from tests.scanpkg import plain

    config.add_pyncette_task(dotted)
    config.commit()
    assert _tasks(config).get("tests.scanpkg.plain:not_decorated").func is plain.not_decorated


def test_directive_with_dotted_name_and_explicit_name(config):
    from tests.scanpkg import plain

    config.add_pyncette_task("tests.scanpkg.plain:not_decorated", name="plain")
    config.commit()
    assert _tasks(config).get("plain").func is plain.not_decorated


def test_directive_with_schedule_declares_a_periodic_task(config):
    config.add_pyncette_task(module_level_task, schedule="0 3 * * *", timezone="Europe/Paris")
    config.commit()
    task = _tasks(config).get("tests.test_tasks:module_level_task")
    assert task.periodic
    assert task.cron == "0 3 * * *"
    assert task.options == {"timezone": "Europe/Paris"}
    assert task.job_options == {}


# --------------------------------------------------------------------------- conflicts


def test_two_directives_with_the_same_name_conflict(config):
    from pyramid.exceptions import ConfigurationConflictError

    config.add_pyncette_task(module_level_task, name="dup")
    config.add_pyncette_task(another_task, name="dup")
    with pytest.raises(ConfigurationConflictError) as excinfo:
        config.commit()
    assert "dup" in str(excinfo.value)


def test_same_function_registered_twice_by_default_name_conflicts(config):
    from pyramid.exceptions import ConfigurationConflictError

    config.add_pyncette_task(module_level_task)
    config.add_pyncette_task(module_level_task)
    with pytest.raises(ConfigurationConflictError):
        config.commit()


def test_decorator_and_directive_with_the_same_name_conflict(config):
    from pyramid.exceptions import ConfigurationConflictError

    config.scan("tests.scanpkg")
    config.add_pyncette_task(another_task, name="mail.cleanup")
    with pytest.raises(ConfigurationConflictError) as excinfo:
        config.commit()
    assert "mail.cleanup" in str(excinfo.value)


def test_directive_reusing_a_decorated_default_name_conflicts(config):
    from pyramid.exceptions import ConfigurationConflictError

    config.scan("tests.scanpkg")
    config.add_pyncette_task(another_task, name=SEND_MAIL)
    with pytest.raises(ConfigurationConflictError):
        config.commit()


def test_different_names_do_not_conflict(config):
    config.add_pyncette_task(module_level_task, name="a")
    config.add_pyncette_task(module_level_task, name="b")
    config.add_pyncette_task(another_task, name="c")
    config.commit()
    assert sorted(task.name for task in _tasks(config)) == ["a", "b", "c"]


# --------------------------------------------------------------------------- introspection


def test_directive_registers_an_introspectable(config):
    config.add_pyncette_task(module_level_task, name="intro", interval="90s", failure_mode="commit")
    config.commit()
    intr = config.registry.introspector.get("pyncette tasks", "intro")
    assert intr is not None
    assert intr.title == "intro"
    assert intr.type_name == "pyncette task"
    assert intr["func"] is module_level_task
    assert intr["schedule"] is None
    assert intr["interval"] == timedelta(seconds=90)
    assert intr["options"] == {"failure_mode": "commit"}


def test_scanned_tasks_are_introspectable(config):
    config.scan("tests.scanpkg")
    config.commit()
    intrs = config.registry.introspector.get_category("pyncette tasks")
    names = {entry["introspectable"].discriminator for entry in intrs}
    assert names == {SEND_MAIL, "mail.cleanup", EVERY_FIVE, "heartbeat", BUILD_REPORT}
    every_five = config.registry.introspector.get("pyncette tasks", EVERY_FIVE)
    assert every_five["schedule"] == "*/5 * * * *"


# --------------------------------------------------------------------------- bad definitions

BAD_TASK_OPTIONS = [
    pytest.param({"execution_mode": "sometimes"}, "execution_mode 'sometimes'", id="mode"),
    pytest.param({"failure_mode": "x"}, "failure_mode 'x' is not one of", id="failure"),
    pytest.param({"lease_duration": "-5s"}, "greater than zero", id="negative-lease"),
    pytest.param({"lease_duration": 0}, "greater than zero", id="zero-lease"),
    pytest.param({"lease_duration": "soon"}, "is not a duration", id="bad-lease"),
    pytest.param({"failure_mod": "unlock"}, "did you mean 'failure_mode'?", id="unknown-option"),
    pytest.param({"retries": 3}, "unknown option 'retries'", id="unknown-no-match"),
    pytest.param({"schedule": "every day"}, "invalid cron expression", id="bad-cron"),
    pytest.param({"schedule": "61 * * * *"}, "invalid cron expression", id="cron-range"),
    pytest.param({"interval": "soon"}, "is not a duration", id="bad-interval"),
    pytest.param({"interval": 0}, "greater than zero", id="zero-interval"),
    pytest.param({"timezone": "Mars/Base"}, "unknown timezone 'Mars/Base'", id="timezone"),
    pytest.param(
        {"schedule": "*/5 * * * *", "interval": "30s"}, "not both", id="schedule-and-interval"
    ),
    pytest.param({"queue": "bad name"}, "queue='bad name'", id="bad-queue"),
    pytest.param({"queue": 5}, "a queue name is a string", id="queue-not-text"),
    pytest.param({"name": "   "}, "non-empty string", id="blank-name"),
    pytest.param({"name": "x" * 201}, "at most 200", id="long-name"),
]


@pytest.mark.parametrize(("options", "fragment"), BAD_TASK_OPTIONS)
def test_directive_rejects_bad_options_at_config_time(config, options, fragment):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(module_level_task, **options)
    assert fragment in str(excinfo.value)
    config.commit()
    assert len(_tasks(config)) == 0


def test_directive_rejects_a_non_callable(config):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(42)
    assert "callable" in str(excinfo.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"execution_mode": "sometimes"}, "execution_mode 'sometimes'"),
        ({"lease_duration": 0}, "greater than zero"),
        ({"failure_mod": "unlock"}, "did you mean 'failure_mode'?"),
        ({"timezone": "Mars/Base"}, "unknown timezone"),
        ({"queue": "e mails"}, "'e mails' is not a queue name"),
    ],
)
def test_task_decorator_rejects_bad_options_when_scanned(config, options, fragment):
    from pyramid_pyncette import InvalidJobError, task

    _, venusian = _decorate(task(**options), module_level_task)
    callback = venusian.attachments[0][1]
    with pytest.raises(InvalidJobError) as excinfo:
        callback(DummyVenusianContext(config), "module_level_task", module_level_task)
    assert fragment in str(excinfo.value)


def test_periodic_task_decorator_rejects_a_bad_cron_when_scanned(config):
    from pyramid_pyncette import InvalidJobError, periodic_task

    _, venusian = _decorate(periodic_task(schedule="not a cron"), module_level_task)
    callback = venusian.attachments[0][1]
    with pytest.raises(InvalidJobError) as excinfo:
        callback(DummyVenusianContext(config), "module_level_task", module_level_task)
    assert "invalid cron expression 'not a cron'" in str(excinfo.value)


def test_task_decorator_callback_registers_the_task(config):
    from pyramid_pyncette import task

    wrapped, venusian = _decorate(task(name="via-callback", failure_mode="unlock"), another_task)
    assert wrapped is another_task
    callback = venusian.attachments[0][1]
    callback(DummyVenusianContext(config), "another_task", another_task)
    config.commit()
    registered = _tasks(config).get("via-callback")
    assert registered.func is another_task
    assert registered.options == {"failure_mode": "unlock"}


def test_periodic_task_needs_a_schedule_or_an_interval():
    from pyramid_pyncette import InvalidJobError, periodic_task

    with pytest.raises(InvalidJobError) as excinfo:
        periodic_task()
    assert "exactly one of schedule=" in str(excinfo.value)


def test_periodic_task_refuses_both_schedule_and_interval():
    from pyramid_pyncette import InvalidJobError, periodic_task

    with pytest.raises(InvalidJobError) as excinfo:
        periodic_task(schedule="*/5 * * * *", interval="30s")
    assert "exactly one of schedule=" in str(excinfo.value)


# --------------------------------------------------------------------------- resolving


def test_resolve_by_function_and_by_name():
    task = _makeTask(module_level_task, name="named")
    registry = _makeRegistry(task)
    assert registry.resolve(module_level_task) is task
    assert registry.resolve("named") is task


def test_resolve_of_a_registered_task_through_the_app(config):
    config.add_pyncette_task(module_level_task)
    config.commit()
    tasks = _tasks(config)
    assert tasks.resolve(module_level_task).name == "tests.test_tasks:module_level_task"
    assert tasks.resolve("tests.test_tasks:module_level_task").func is module_level_task


def test_resolve_unknown_function_says_how_to_register():
    from pyramid_pyncette import InvalidJobError, UnknownTaskError

    registry = _makeRegistry(_makeTask(module_level_task))
    with pytest.raises(UnknownTaskError) as excinfo:
        registry.resolve(unregistered)
    message = str(excinfo.value)
    assert "tests.test_tasks:unregistered" in message
    assert "@pyramid_pyncette.task()" in message
    assert "config.add_pyncette_task" in message
    assert isinstance(excinfo.value, InvalidJobError)
    assert isinstance(excinfo.value, LookupError)


def test_resolve_unknown_name_suggests_a_close_match():
    from pyramid_pyncette import UnknownTaskError

    registry = _makeRegistry(_makeTask(module_level_task, name="reports.nightly"))
    with pytest.raises(UnknownTaskError) as excinfo:
        registry.resolve("reports.nigthly")
    message = str(excinfo.value)
    assert "'reports.nigthly'" in message
    assert "did you mean 'reports.nightly'?" in message
    assert "config.add_pyncette_task" in message


def test_resolve_unknown_name_without_close_match_suggests_nothing():
    from pyramid_pyncette import UnknownTaskError

    registry = _makeRegistry(_makeTask(module_level_task, name="reports.nightly"))
    with pytest.raises(UnknownTaskError) as excinfo:
        registry.resolve("zzz")
    assert "did you mean" not in str(excinfo.value)


def test_resolve_function_registered_under_two_names_asks_for_the_name(config):
    from pyramid_pyncette import UnknownTaskError

    config.add_pyncette_task(module_level_task, name="first")
    config.add_pyncette_task(module_level_task, name="second")
    config.commit()
    tasks = _tasks(config)
    with pytest.raises(UnknownTaskError) as excinfo:
        tasks.resolve(module_level_task)
    message = str(excinfo.value)
    assert "first" in message
    assert "second" in message
    assert "pass the task name" in message
    assert tasks.resolve("first").func is module_level_task
    assert tasks.resolve("second").func is module_level_task


def test_resolve_an_unhashable_value_is_an_unknown_task():
    from pyramid_pyncette import UnknownTaskError

    registry = _makeRegistry(_makeTask(module_level_task))
    with pytest.raises(UnknownTaskError):
        registry.resolve(["not", "a", "task"])


def test_async_function_is_an_async_task():
    assert _makeTask(async_task).is_async
    assert not _makeTask(module_level_task).is_async


# --------------------------------------------------------------------------- task options


def test_task_options_are_the_defaults_of_its_jobs(config):
    config.add_pyncette_task(module_level_task, failure_mode="unlock", lease_duration="2m")
    config.commit()
    scheduler = config.registry.scheduler
    job = scheduler.add_async_job(module_level_task)
    assert job.options == {"failure_mode": "unlock", "lease_duration": 120.0}
    override = scheduler.add_async_job(module_level_task, failure_mode="commit")
    assert override.options == {"failure_mode": "commit", "lease_duration": 120.0}


def test_task_timezone_option_is_not_a_job_option(config):
    config.add_pyncette_task(module_level_task, schedule="0 3 * * *", timezone="Asia/Tokyo")
    config.commit()
    scheduler = config.registry.scheduler
    job = scheduler.add_async_job(module_level_task)
    assert "timezone" not in job.options


def test_task_queue_option_is_its_jobs_queue_not_a_job_option(config):
    config.add_pyncette_task(module_level_task, queue="emails", max_retries=2)
    config.commit()
    scheduler = config.registry.scheduler
    job = scheduler.add_async_job(module_level_task)
    assert (job.queue, job.options) == ("emails", {"max_retries": 2})
    assert scheduler.add_async_job(module_level_task, queue="bulk").queue == "bulk"


def test_task_decorator_with_a_queue_registers_it(config):
    from pyramid_pyncette import periodic_task, task

    for decorator, name in (
        (task(name="mailer", queue="emails"), "mailer"),
        (periodic_task(interval="30s", name="sweeper", queue="ops"), "sweeper"),
    ):
        _, venusian = _decorate(decorator, module_level_task)
        venusian.attachments[0][1](DummyVenusianContext(config), name, module_level_task)
    config.commit()
    assert _tasks(config).get("mailer").queue == "emails"
    assert _tasks(config).get("sweeper").queue == "ops"
    [job] = config.registry.scheduler.sync_periodic_jobs()
    assert (job.id, job.queue) == ("sweeper", "ops")


def test_a_task_without_a_queue_is_in_the_default_queue(config):
    config.add_pyncette_task(module_level_task)
    config.commit()
    [task] = list(_tasks(config))
    assert task.queue == "default"
    assert config.registry.scheduler.add_async_job(module_level_task).queue == "default"


# --------------------------------------------------------------------------- conflicts and limits


@pytest.mark.parametrize(
    "option",
    [
        {"failure_mode": "unlock"},
        {"failure_mode": "none"},
        {"failure_mode": "commit"},
        {"max_retries": 2},
        {"retry_backoff": "5s"},
        {"retry_backoff_max": "1m"},
        {"retry_exhausted": "park"},
    ],
    ids=lambda option: next(iter(option)),
)
def test_an_at_most_once_task_with_a_retry_option_is_refused_at_registration(config, option):
    from pyramid_pyncette import InvalidJobError

    (key,) = option
    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(
            module_level_task, name="once", execution_mode="at_most_once", **option
        )
    assert str(excinfo.value).startswith(
        f"task 'once': {key} needs execution_mode='at_least_once' (it is "
    )
    assert f"drop {key}, or use execution_mode='at_least_once'" in str(excinfo.value)
    config.commit()
    assert len(_tasks(config)) == 0


def test_a_job_made_at_most_once_against_its_task_retry_option_names_the_task(config):
    from pyramid_pyncette import InvalidJobError

    config.add_pyncette_task(module_level_task, name="flaky", failure_mode="unlock")
    config.commit()
    scheduler = config.registry.scheduler
    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job("flaky", execution_mode="at_most_once")
    assert (
        "failure_mode needs execution_mode='at_least_once' (it is 'unlock', set on the task)"
        in (str(excinfo.value))
    )
    assert list(scheduler.iter_jobs()) == []


@pytest.mark.parametrize("register", ["directive", "decorator"])
def test_a_periodic_interval_task_with_a_timezone_is_refused(config, register):
    from pyramid_pyncette import InvalidJobError, periodic_task

    with pytest.raises(InvalidJobError) as excinfo:
        if register == "directive":
            config.add_pyncette_task(
                module_level_task, name="tick", interval="30s", timezone="Europe/Paris"
            )
        else:
            decorator = periodic_task(interval="30s", name="tick", timezone="Europe/Paris")
            _, venusian = _decorate(decorator, module_level_task)
            callback = venusian.attachments[0][1]
            callback(DummyVenusianContext(config), "module_level_task", module_level_task)
    assert str(excinfo.value) == (
        "task 'tick': timezone= has no effect on an interval schedule (it runs every interval "
        "whatever the zone); drop timezone=, or use a cron schedule, which honours it"
    )
    config.commit()
    assert len(_tasks(config)) == 0


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("mail\x00send", "contains a NUL character (at position 4)"),
        ("mail\udc80send", "contains the lone surrogate '\\udc80' (at position 4)"),
    ],
    ids=["nul", "lone-surrogate"],
)
@pytest.mark.parametrize("register", ["directive", "decorator"])
def test_a_task_name_with_a_nul_or_lone_surrogate_is_refused(config, name, problem, register):
    from pyramid_pyncette import InvalidJobError, task

    with pytest.raises(InvalidJobError) as excinfo:
        if register == "directive":
            config.add_pyncette_task(module_level_task, name=name)
        else:
            _, venusian = _decorate(task(name=name), module_level_task)
            callback = venusian.attachments[0][1]
            callback(DummyVenusianContext(config), "module_level_task", module_level_task)
    assert f"task name {name!r} {problem}" in str(excinfo.value)
    config.commit()
    assert len(_tasks(config)) == 0


@pytest.mark.parametrize(
    ("interval", "shown"),
    [(0.000001, "0.000001s"), ("500ms", "0.5s"), (timedelta(milliseconds=999), "0.999s")],
)
def test_a_periodic_interval_below_one_second_is_refused(config, interval, shown):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(module_level_task, name="busy", interval=interval)
    assert str(excinfo.value).startswith(
        f"task 'busy': interval: {shown} is shorter than the minimum of 1s; use interval='1s'"
    )
    config.add_pyncette_task(module_level_task, name="fine", interval=1)
    config.commit()
    assert [task.name for task in _tasks(config)] == ["fine"]


def takes_nothing():
    return "no request"


def needs_a_report(request, report_id):
    return report_id


def test_a_task_whose_function_cannot_take_the_request_is_refused(config):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(takes_nothing, name="nothing")
    assert str(excinfo.value) == (
        "task 'nothing': its function takes () (too many positional arguments); a task is "
        "called as func(request, *args, **kwargs): give the function a first parameter for "
        "the request"
    )


def test_a_periodic_task_whose_function_needs_arguments_is_refused(config):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(needs_a_report, name="report", interval="1h")
    assert "task 'report': its function takes (request, report_id)" in str(excinfo.value)
    assert "missing a required argument: 'report_id'" in str(excinfo.value)
    assert "a periodic task's job has no arguments" in str(excinfo.value)
    config.add_pyncette_task(needs_a_report, name="on-demand")  # fine without a schedule
    config.commit()
    assert [task.name for task in _tasks(config)] == ["on-demand"]


def test_a_task_whose_signature_cannot_be_read_is_not_checked(config):
    # A callable whose __signature__ is not a Signature cannot be inspected: the
    # arguments are passed on unchecked (the call would fail at run time).
    class Opaque:
        __signature__ = "not a signature"

        def __call__(self, request):
            return "ran"

    with pytest.raises(TypeError):
        inspect.signature(Opaque())
    config.add_pyncette_task(Opaque(), name="opaque", interval="1h")
    config.commit()
    job = config.registry.scheduler.add_async_job("opaque", args=[1, 2], kwargs={"x": 3})
    assert (job.args, job.kwargs) == ([1, 2], {"x": 3})


def test_a_periodic_interval_too_long_for_a_schedule_is_refused_clearly(config):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        config.add_pyncette_task(module_level_task, name="never", interval=1e20)
    assert str(excinfo.value) == (
        "task 'never': interval 1e+20 is too long for a schedule; use a duration such as "
        "'30s', '5m' or timedelta(hours=1)"
    )

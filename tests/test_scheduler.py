from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

UTC = timezone.utc
NOW = datetime(2030, 1, 1, 0, 7, tzinfo=UTC)
TASK_NAME = "tests.test_scheduler:send_report"
#: A memory store whose default timezone is Tokyo's.
TOKYO = {"pyncette.url": "memory://", "pyncette.timezone": "Asia/Tokyo"}


def send_report(request, *args, **kwargs):
    return "sent"


def other_task(request):
    return "other"


def unregistered(request):
    return "never registered"


def _report_app(config):
    """Add two tasks and a JobScheduled recorder, commit, set a fake clock."""
    from pyramid_pyncette import IJobScheduled
    from pyramid_pyncette.testing import FakeClock

    config.add_pyncette_task(send_report)
    config.add_pyncette_task(other_task, name="other")
    config.registry.scheduled_events = []
    config.add_subscriber(config.registry.scheduled_events.append, IJobScheduled)
    config.commit()
    config.registry.scheduler.clock = FakeClock(NOW)
    return config


@pytest.fixture
def config(make_config):
    return _report_app(make_config())


@pytest.fixture
def scheduler(config):
    return config.registry.scheduler


def _all_jobs(scheduler):
    return list(scheduler.iter_jobs())


def _assert_added(config, job, task=TASK_NAME):
    """The job came back complete, is stored as returned and announced once."""
    from pyramid_pyncette import Job

    scheduler = config.registry.scheduler
    assert isinstance(job, Job)
    assert isinstance(job.id, str)
    assert job.id
    assert job.task == task
    assert job.next_run_at is not None
    assert job.next_run_at.utcoffset() == timedelta(0)
    assert scheduler.get_job(job.id) == job
    events = config.registry.scheduled_events
    assert [event.job for event in events] == [job]
    assert events[0].registry is config.registry


# --------------------------------------------------------------------------- add_date_job


def test_add_date_job_with_aware_utc_datetime(config, scheduler):
    when = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    job = scheduler.add_date_job(send_report, when, args=[1], kwargs={"to": "ops"})
    _assert_added(config, job)
    assert job.next_run_at == when
    assert job.args == [1]
    assert job.kwargs == {"to": "ops"}
    assert job.schedule["kind"] == "date"
    assert not job.recurring


def test_add_date_job_converts_other_zones_to_utc(config, scheduler):
    when = datetime(2030, 6, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    job = scheduler.add_date_job(send_report, when)
    _assert_added(config, job)
    assert job.next_run_at == datetime(2030, 6, 1, 10, 0, tzinfo=UTC)
    assert job.next_run_at.tzinfo == UTC


def test_add_date_job_with_epoch_seconds(config, scheduler):
    job = scheduler.add_date_job(send_report, 1_900_000_000)
    _assert_added(config, job)
    assert job.next_run_at == datetime(2030, 3, 17, 17, 46, 40, tzinfo=UTC)


def test_add_date_job_with_iso_string_with_offset(config, scheduler):
    job = scheduler.add_date_job(send_report, "2030-06-01T12:00:00+02:00")
    _assert_added(config, job)
    assert job.next_run_at == datetime(2030, 6, 1, 10, 0, tzinfo=UTC)


def test_add_date_job_in_the_past_is_due_at_once(config, scheduler):
    when = NOW - timedelta(days=1)
    job = scheduler.add_date_job(send_report, when)
    assert job.next_run_at == when
    assert job.due_at == when


def test_add_date_job_by_task_name(config, scheduler):
    job = scheduler.add_date_job("other", NOW + timedelta(hours=1))
    _assert_added(config, job, task="other")


def test_add_date_job_records_creation_time(config, scheduler):
    job = scheduler.add_date_job(send_report, NOW + timedelta(hours=1))
    assert job.created_at == NOW


# --------------------------------------------------------------------------- add_interval_job


@pytest.mark.parametrize(
    ("kwargs", "every"),
    [
        pytest.param({"interval": timedelta(minutes=5)}, timedelta(minutes=5), id="timedelta"),
        pytest.param({"interval": 90}, timedelta(seconds=90), id="seconds"),
        pytest.param({"interval": 2.5}, timedelta(seconds=2.5), id="float-seconds"),
        pytest.param({"interval": "1h30m"}, timedelta(minutes=90), id="string"),
        pytest.param({"hours": 1, "minutes": 30}, timedelta(minutes=90), id="units"),
        pytest.param({"weeks": 1, "days": 1}, timedelta(days=8), id="weeks-days"),
        pytest.param({"seconds": 45}, timedelta(seconds=45), id="seconds-keyword"),
    ],
)
def test_add_interval_job_first_run_is_one_interval_from_now(config, scheduler, kwargs, every):
    job = scheduler.add_interval_job(send_report, **kwargs)
    _assert_added(config, job)
    assert job.next_run_at == NOW + every
    assert job.schedule["kind"] == "interval"
    assert job.schedule["microseconds"] == every // timedelta(microseconds=1)
    assert job.recurring


def test_add_interval_job_with_future_start_date_starts_then(config, scheduler):
    start = NOW + timedelta(days=2)
    job = scheduler.add_interval_job(send_report, "1h", start_date=start)
    _assert_added(config, job)
    assert job.next_run_at == start


def test_add_interval_job_with_past_start_date_stays_on_its_grid(config, scheduler):
    start = NOW - timedelta(minutes=25)
    job = scheduler.add_interval_job(send_report, timedelta(minutes=10), start_date=start)
    assert job.next_run_at == NOW + timedelta(minutes=5)


def test_add_interval_job_start_date_as_iso_string(config, scheduler):
    job = scheduler.add_interval_job(
        send_report, minutes=30, start_date="2030-01-02T09:00:00+01:00"
    )
    assert job.next_run_at == datetime(2030, 1, 2, 8, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- add_cron_job


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        pytest.param(("*/15 * * * *",), {}, datetime(2030, 1, 1, 0, 15, tzinfo=UTC), id="5"),
        pytest.param(("0 * * * * 30",), {}, datetime(2030, 1, 1, 1, 0, 30, tzinfo=UTC), id="6"),
        pytest.param((), {"hour": 3}, datetime(2030, 1, 1, 3, 0, 0, tzinfo=UTC), id="hour"),
        pytest.param((), {"minute": "*/20"}, datetime(2030, 1, 1, 0, 20, tzinfo=UTC), id="minute"),
        pytest.param(
            (),
            {"day_of_week": "mon", "hour": 9},
            datetime(2030, 1, 7, 9, 0, tzinfo=UTC),
            id="weekday",
        ),
        pytest.param(
            ("0 3 * * *",),
            {"timezone": "America/New_York"},
            datetime(2030, 1, 1, 8, 0, tzinfo=UTC),
            id="timezone",
        ),
        pytest.param(
            (),
            {"hour": 3, "timezone": "America/New_York"},
            datetime(2030, 1, 1, 8, 0, tzinfo=UTC),
            id="fields-timezone",
        ),
    ],
)
def test_add_cron_job_next_run(config, scheduler, args, kwargs, expected):
    job = scheduler.add_cron_job(send_report, *args, **kwargs)
    _assert_added(config, job)
    assert job.next_run_at == expected
    assert job.schedule["kind"] == "cron"
    assert job.schedule["timezone"] == kwargs.get("timezone", "UTC")


def test_add_cron_job_hour_keyword_fires_at_that_hour_sharp(config, scheduler):
    scheduler.clock.set(datetime(2030, 1, 1, 4, 0, tzinfo=UTC))
    job = scheduler.add_cron_job(send_report, hour=3)
    assert job.next_run_at == datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC)
    assert (job.next_run_at.minute, job.next_run_at.second) == (0, 0)


def test_add_cron_job_uses_the_timezone_setting_by_default(make_config):
    config = _report_app(make_config(TOKYO))
    scheduler = config.registry.scheduler
    job = scheduler.add_cron_job(send_report, hour=3)
    # 00:07 UTC is 09:07 in Tokyo: the next 03:00 there is 18:00 UTC.
    assert job.next_run_at == datetime(2030, 1, 1, 18, 0, tzinfo=UTC)
    assert job.schedule["timezone"] == "Asia/Tokyo"


def test_add_cron_job_timezone_argument_beats_the_setting(make_config):
    config = _report_app(make_config(TOKYO))
    scheduler = config.registry.scheduler
    job = scheduler.add_cron_job(send_report, "0 3 * * *", timezone="UTC")
    assert job.next_run_at == datetime(2030, 1, 1, 3, 0, tzinfo=UTC)
    assert job.schedule["timezone"] == "UTC"


def test_add_cron_job_with_start_date(config, scheduler):
    start = datetime(2030, 2, 1, tzinfo=UTC)
    job = scheduler.add_cron_job(send_report, "0 3 * * *", start_date=start)
    assert job.next_run_at == datetime(2030, 2, 1, 3, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- add_async_job


def test_add_async_job_is_due_now(config, scheduler):
    job = scheduler.add_async_job(send_report, args=["x"])
    _assert_added(config, job)
    assert job.next_run_at == NOW
    assert job.due_at == NOW


def test_add_async_job_runs_on_the_next_poll(config, scheduler):
    from pyramid_pyncette.testing import run_pending

    job = scheduler.add_async_job(send_report)
    assert run_pending(config.registry, NOW) == 1
    assert scheduler.get_job(job.id) is None


# --------------------------------------------------------------------------- ids and options


def test_job_id_replaces_an_existing_job(config, scheduler):
    first = scheduler.add_date_job(send_report, NOW + timedelta(hours=1), job_id="nightly")
    second = scheduler.add_date_job(
        send_report, NOW + timedelta(hours=2), args=[2], job_id="nightly"
    )
    assert first.id == second.id == "nightly"
    stored = _all_jobs(scheduler)
    assert stored == [second]
    assert stored[0].next_run_at == NOW + timedelta(hours=2)
    assert stored[0].args == [2]
    assert len(config.registry.scheduled_events) == 2


def test_generated_job_ids_are_unique(scheduler):
    ids = {scheduler.add_async_job(send_report).id for _ in range(20)}
    assert len(ids) == 20


def test_job_id_may_be_exactly_the_longest_allowed(scheduler):
    job = scheduler.add_async_job(send_report, job_id="x" * 200)
    assert scheduler.get_job("x" * 200) == job


def test_job_options_are_stored(scheduler):
    job = scheduler.add_async_job(send_report, execution_mode="at_most_once", lease_duration="5m")
    stored = scheduler.get_job(job.id)
    assert stored.execution_mode == "at_most_once"
    assert stored.lease_duration == 300.0
    job = scheduler.add_async_job(send_report, failure_mode="unlock")
    assert scheduler.get_job(job.id).failure_mode == "unlock"


# --------------------------------------------------------------------------- reading, cancelling


def test_get_job_of_an_unknown_id_is_none(scheduler):
    assert scheduler.get_job("nope") is None


def test_get_jobs_pages_by_id(scheduler):
    for index in range(5):
        scheduler.add_async_job(send_report, job_id=f"job-{index}")
    first = scheduler.get_jobs(limit=2)
    assert [job.id for job in first] == ["job-0", "job-1"]
    assert first.next_cursor is not None
    second = scheduler.get_jobs(limit=2, cursor=first.next_cursor)
    assert [job.id for job in second] == ["job-2", "job-3"]
    third = scheduler.get_jobs(limit=2, cursor=second.next_cursor)
    assert [job.id for job in third] == ["job-4"]
    assert third.next_cursor is None


def test_get_jobs_filters_by_task_function_or_name(scheduler):
    scheduler.add_async_job(send_report, job_id="a")
    scheduler.add_async_job("other", job_id="b")
    scheduler.add_async_job(send_report, job_id="c")
    assert [job.id for job in scheduler.get_jobs(task=send_report)] == ["a", "c"]
    assert [job.id for job in scheduler.get_jobs(task="other")] == ["b"]


def test_get_jobs_of_an_unknown_task_raises(scheduler):
    from pyramid_pyncette import UnknownTaskError

    with pytest.raises(UnknownTaskError):
        scheduler.get_jobs(task=unregistered)


@pytest.mark.parametrize("limit", [0, -1, True, "10", 2.5, None])
def test_get_jobs_rejects_a_bad_limit(scheduler, limit):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.get_jobs(limit=limit)
    assert "limit must be a positive integer" in str(excinfo.value)


def test_iter_jobs_walks_every_page(scheduler):
    for index in range(7):
        scheduler.add_async_job(send_report, job_id=f"job-{index}")
    assert [job.id for job in scheduler.iter_jobs(page_size=3)] == [
        f"job-{index}" for index in range(7)
    ]


def test_cancel_job_removes_it(scheduler):
    job = scheduler.add_interval_job(send_report, "1m")
    keep = scheduler.add_interval_job(send_report, "1m")
    assert scheduler.cancel_job(job.id) is True
    assert scheduler.get_job(job.id) is None
    assert _all_jobs(scheduler) == [keep]


def test_cancel_job_of_an_unknown_id_is_false(scheduler):
    assert scheduler.cancel_job("never-added") is False


def test_cancel_job_rejects_a_non_string_id(scheduler):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError):
        scheduler.cancel_job(42)


# --------------------------------------------------------------------------- bad input matrix

AWARE = datetime(2030, 1, 2, tzinfo=UTC)

BAD_INPUT = [
    pytest.param(
        lambda s: s.add_date_job(send_report, datetime(2030, 1, 2)),
        ["naive datetime", "pass an aware datetime"],
        id="naive-datetime",
    ),
    pytest.param(
        lambda s: s.add_date_job(send_report, "2030-01-02T10:00:00"),
        ["has no UTC offset", "add one"],
        id="iso-without-offset",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, "1m", start_date=datetime(2030, 1, 2)),
        ["start_date", "naive datetime", "pass an aware datetime"],
        id="naive-start-date",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report, "0 3 * * *", start_date=datetime(2030, 1, 2)),
        ["start_date", "naive datetime", "pass an aware datetime"],
        id="naive-cron-start-date",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report, "every day at noon"),
        ["invalid cron expression 'every day at noon'", "expected 5 fields"],
        id="invalid-cron",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report, "0 3 * * *", timezone="Mars/Base"),
        ["unknown timezone 'Mars/Base'", "use an IANA name"],
        id="unknown-timezone",
    ),
    pytest.param(
        lambda s: s.add_date_job(send_report, AWARE, kwargs={"when": AWARE}),
        ["kwargs['when']", "is a datetime, which is not JSON", "isoformat()"],
        id="datetime-in-kwargs",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report, "0 3 * * *", args=[{1, 2}]),
        ["args[0]", "is a set", "pass a list"],
        id="set-in-args",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, "1m", args=[1, float("nan")]),
        ["args[1] = nan is not a finite number", "pass str, int, float"],
        id="nan",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, kwargs={"counts": {1: "one"}}),
        ["kwargs['counts'] has the non-string key 1", "dicts with string keys"],
        id="int-dict-keys",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, args=[b"raw"]),
        ["args[0] = b'raw' is a bytes", "value.decode()"],
        id="bytes",
    ),
    pytest.param(
        lambda s: s.add_async_job(unregistered),
        [
            "tests.test_scheduler:unregistered is not a registered task",
            "@pyramid_pyncette.task()",
            "config.add_pyncette_task",
        ],
        id="unregistered-function",
    ),
    pytest.param(
        lambda s: s.add_date_job("no-such-task", AWARE),
        ["no task is registered as 'no-such-task'", "config.add_pyncette_task"],
        id="unknown-task-name",
    ),
    pytest.param(
        lambda s: s.add_async_job("othr"),
        ["'othr'", "did you mean 'other'?"],
        id="misspelt-task-name",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report, "0 3 * * *", hour=3),
        ["not both", "give either a cron string or field keywords"],
        id="schedule-and-fields",
    ),
    pytest.param(
        lambda s: s.add_cron_job(send_report),
        ["no schedule given", "pass a cron string such as"],
        id="no-cron-schedule",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report),
        ["no interval given", "pass interval='30s'"],
        id="no-interval",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, "30s", minutes=5),
        ["not both", "give either interval= or the unit keywords"],
        id="interval-and-units",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, 0),
        ["greater than zero", "use seconds (e.g. 30)"],
        id="zero-interval",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, timedelta(0)),
        ["greater than zero", "use seconds (e.g. 30)"],
        id="zero-timedelta",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, -5),
        ["greater than zero", "use seconds (e.g. 30)"],
        id="negative-interval",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, "-1m"),
        ["greater than zero", "use seconds (e.g. 30)"],
        id="negative-interval-string",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, seconds=-5),
        ["seconds=-5", ">= 0"],
        id="negative-unit-keyword",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, seconds="5"),
        ["seconds"],
        id="unit-keyword-string",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, seconds=True),
        ["seconds"],
        id="unit-keyword-bool",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, seconds=float("nan")),
        ["seconds=nan", "finite", "pass e.g."],
        id="unit-keyword-nan",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, job_id=42),
        ["job_id must be a string, got int", "pass str(value)"],
        id="job-id-not-string",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, job_id="x" * 201),
        ["job_id must be 1 to 200 characters", "got 201"],
        id="job-id-too-long",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, job_id=""),
        ["job_id must be 1 to 200 characters", "got 0"],
        id="job-id-empty",
    ),
    pytest.param(
        lambda s: s.add_date_job(send_report, AWARE, retries=3),
        ["unknown option 'retries'", "allowed options are execution_mode"],
        id="unknown-option",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, failure_mod="unlock"),
        ["unknown option 'failure_mod'", "did you mean 'failure_mode'?"],
        id="misspelt-option",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, timezone="UTC"),
        ["unknown option 'timezone'", "allowed options are"],
        id="task-only-option",
    ),
    pytest.param(
        lambda s: s.add_interval_job(send_report, "1m", execution_mode="sometimes"),
        ["execution_mode 'sometimes'", "at_least_once, at_most_once"],
        id="bad-execution-mode",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, failure_mode="retry"),
        ["failure_mode 'retry'", "none, unlock, commit"],
        id="bad-failure-mode",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, lease_duration="-5s"),
        ["lease_duration", "greater than zero", "use seconds (e.g. 30)"],
        id="negative-lease-duration",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, args="abc"),
        ["args must be a list or tuple", "got str"],
        id="args-string",
    ),
    pytest.param(
        lambda s: s.add_async_job(send_report, kwargs=["a", "b"]),
        ["kwargs must be a dict", "got list"],
        id="kwargs-list",
    ),
]


@pytest.mark.parametrize(("call", "fragments"), BAD_INPUT)
def test_bad_input_raises_and_writes_nothing(config, scheduler, call, fragments):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        call(scheduler)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message
    assert list(scheduler.iter_jobs()) == []
    assert config.registry.scheduled_events == []


def test_bad_input_leaves_an_existing_job_with_that_id_alone(config, scheduler):
    from pyramid_pyncette import InvalidJobError

    job = scheduler.add_date_job(send_report, AWARE, job_id="keep")
    with pytest.raises(InvalidJobError):
        scheduler.add_date_job(send_report, AWARE, job_id="keep", args=[{1}])
    assert _all_jobs(scheduler) == [job]
    assert len(config.registry.scheduled_events) == 1


def test_bad_start_date_is_not_blamed_on_the_interval(scheduler):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_interval_job(send_report, "1m", start_date="tomorrow")
    message = str(excinfo.value)
    assert "start_date" in message
    assert "ISO-8601" in message
    assert "interval is not usable" not in message
    assert "use a positive duration" not in message


# --------------------------------------------------------------------------- limits and conflicts


def test_add_interval_job_with_a_timezone_is_refused_in_the_words_a_task_gets(scheduler):
    from pyramid_pyncette import InvalidJobError
    from pyramid_pyncette.tasks import make_task

    with pytest.raises(InvalidJobError) as refused_job:
        scheduler.add_interval_job(send_report, "1m", timezone="Europe/Paris")
    with pytest.raises(InvalidJobError) as refused_task:
        make_task(send_report, name="t", interval="1m", timezone="Europe/Paris")
    assert str(refused_job.value).startswith("add_interval_job: timezone= has no effect")
    job_words = str(refused_job.value).removeprefix("add_interval_job: ")
    assert job_words == str(refused_task.value).removeprefix("task 't': ")
    assert _all_jobs(scheduler) == []


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda s: s.add_interval_job(send_report, 0.000001), "0.000001s"),
        (lambda s: s.add_interval_job(send_report, "500ms"), "0.5s"),
        (lambda s: s.add_interval_job(send_report, timedelta(microseconds=1)), "0.000001s"),
        (lambda s: s.add_interval_job(send_report, seconds=0.5), "0.5s"),
        (lambda s: s.add_interval_job(send_report, minutes=0.001), "0.06s"),
    ],
    ids=["float", "ms-string", "timedelta", "seconds-keyword", "minutes-keyword"],
)
def test_add_interval_job_shorter_than_one_second_is_refused(scheduler, call, shown):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        call(scheduler)
    assert str(excinfo.value).startswith(
        f"add_interval_job: interval: {shown} is shorter than the minimum of 1s; "
        "use interval='1s' or longer"
    )
    assert _all_jobs(scheduler) == []


def test_add_interval_job_of_one_second_is_accepted(scheduler):
    job = scheduler.add_interval_job(send_report, seconds=1)
    assert job.next_run_at == NOW + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s: s.add_cron_job(send_report, "61 * * * *"),
            "add_cron_job: invalid cron expression '61 * * * *': minute 61 is out of range 0-59",
        ),
        (
            lambda s: s.add_cron_job(send_report, "0 0 * * * 61"),
            "add_cron_job: invalid cron expression '0 0 * * * 61': second 61 is out of range 0-59",
        ),
        (
            lambda s: s.add_cron_job(send_report, "0 0 * * sat-mon"),
            "add_cron_job: invalid cron expression '0 0 * * sat-mon': day_of_week range sat-mon "
            "runs backwards; write '1-6', or '6,0-1' for a range that wraps around",
        ),
        (
            lambda s: s.add_cron_job(send_report, minute=61),
            "add_cron_job: minute 61 is out of range 0-59",
        ),
        (
            lambda s: s.add_cron_job(send_report, month="foo", day=1),
            "add_cron_job: month 'foo' is not a name this field knows; use 1-12 or jan-dec",
        ),
    ],
    ids=["five-fields", "six-fields", "backwards-names", "keyword", "keyword-name"],
)
def test_add_cron_job_range_errors_name_the_field_and_its_range(scheduler, call, message):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        call(scheduler)
    assert str(excinfo.value) == message
    assert _all_jobs(scheduler) == []


def test_arguments_that_contain_themselves_are_refused(scheduler):
    from pyramid_pyncette import InvalidJobError

    loop = []
    loop.append(loop)
    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job(send_report, kwargs={"loop": loop})
    assert "is nested more than 100 lists or dicts deep (or contains itself)" in str(excinfo.value)
    assert _all_jobs(scheduler) == []


def test_arguments_at_the_depth_limit_are_accepted(scheduler):
    from pyramid_pyncette.scheduler import MAX_ARGUMENT_DEPTH

    deepest = "bottom"
    for _ in range(MAX_ARGUMENT_DEPTH):
        deepest = [deepest]
    job = scheduler.add_async_job(send_report, args=[deepest])
    assert scheduler.get_job(job.id).args == [deepest]


def test_a_dict_key_with_a_nul_is_refused(scheduler):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job(send_report, kwargs={"data": {"a\x00": 1}})
    assert str(excinfo.value) == (
        "job arguments must be JSON: kwargs['data'] has the key 'a\\x00', which contains a NUL "
        "character (at position 1), which not every store can keep; remove that character "
        "from the key"
    )


def test_an_integer_too_long_to_write_as_json_is_refused(scheduler):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job(send_report, args=[10**5000])
    assert "job arguments cannot be written as JSON" in str(excinfo.value)
    assert "pass large numbers as text" in str(excinfo.value)
    assert _all_jobs(scheduler) == []


@pytest.mark.parametrize("method", ["get_job", "cancel_job", "retry_job"])
def test_looking_up_a_job_id_with_a_nul_is_refused(scheduler, method):
    from pyramid_pyncette import InvalidJobError

    with pytest.raises(InvalidJobError, match=r"job_id 'a\\x00' contains a NUL character"):
        getattr(scheduler, method)("a\x00")


def strict_task(request, report_id, *, fmt="pdf"):
    return report_id


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        ([], {}, "missing a required argument: 'report_id'"),
        ([1, 2], {}, "too many positional arguments"),
        ([1], {"format": "csv"}, "got an unexpected keyword argument 'format'"),
        ([1], {"report_id": 2}, "multiple values for argument 'report_id'"),
    ],
    ids=["missing", "too-many", "unknown-keyword", "twice"],
)
def test_arguments_the_task_can_never_be_called_with_are_refused(
    make_config, args, kwargs, problem
):
    from pyramid_pyncette import InvalidJobError

    config = _report_app(make_config())
    config.add_pyncette_task(strict_task, name="strict")
    config.commit()
    scheduler = config.registry.scheduler
    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job("strict", args=args, kwargs=kwargs)
    assert str(excinfo.value) == (
        "add_async_job: task 'strict' cannot be called as func(request, *args, **kwargs) "
        f"with args={args!r}, kwargs={kwargs!r}: {problem}; its function takes "
        "(request, report_id, *, fmt='pdf'), pass arguments that match"
    )
    assert _all_jobs(scheduler) == []
    job = scheduler.add_async_job("strict", args=[1], kwargs={"fmt": "csv"})
    assert (job.args, job.kwargs) == ([1], {"fmt": "csv"})


def open_task(req, *args, **kwargs):
    return args, kwargs


def test_a_keyword_named_like_the_request_parameter_is_refused(make_config):
    from pyramid_pyncette import InvalidJobError

    config = _report_app(make_config())
    config.add_pyncette_task(open_task, name="open")
    config.commit()
    scheduler = config.registry.scheduler
    with pytest.raises(InvalidJobError) as excinfo:
        scheduler.add_async_job("open", args=[1], kwargs={"req": 2})
    assert "multiple values for argument 'req'" in str(excinfo.value)
    job = scheduler.add_async_job("open", args=[1, 2], kwargs={"anything": 3})
    assert (job.args, job.kwargs) == ([1, 2], {"anything": 3})
    assert [job.id for job in _all_jobs(scheduler)] == [job.id]

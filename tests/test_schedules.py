import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

UTC = timezone.utc
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _mod():
    from pyramid_pyncette import schedules

    return schedules


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


def _iterate(schedule, start, until):
    """Run times produced by feeding each run back as scheduled_at and now."""
    runs = []
    current = schedule.first_run(start)
    while current is not None and current <= until:
        runs.append(current)
        current = schedule.next_run(current, current)
    return runs


def _chain(schedule, after, count):
    runs = []
    current = after
    for _ in range(count):
        current = schedule.next_run(current, current)
        runs.append(current)
    return runs


# --- interval ---------------------------------------------------------------


def test_interval_two_seconds_runs_five_times_in_ten_seconds():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(seconds=2)).anchored(T0)
    runs = _iterate(schedule, T0, T0 + timedelta(seconds=10))
    assert runs == [T0 + timedelta(seconds=n) for n in (2, 4, 6, 8, 10)]


def test_interval_first_run_without_start_is_now_plus_interval():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(minutes=5))
    assert schedule.first_run(T0) == T0 + timedelta(minutes=5)
    anchored = schedule.anchored(T0)
    assert anchored.start_date == T0 + timedelta(minutes=5)
    assert anchored.first_run(T0) == T0 + timedelta(minutes=5)
    assert anchored.anchored(T0 + timedelta(days=1)) is anchored


def test_interval_anchored_is_identity_for_other_kinds():
    s = _mod()
    date = s.DateSchedule(T0)
    cron = s.CronSchedule("* * * * *")
    assert date.anchored(T0) is date
    assert cron.anchored(T0) is cron


def test_interval_coalesces_missed_runs():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(seconds=10), start_date=T0)
    assert schedule.next_run(T0, T0 + timedelta(seconds=35)) == T0 + timedelta(seconds=40)


def test_interval_coalesces_for_unanchored_schedule_too():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(seconds=10))
    assert schedule.next_run(T0, T0 + timedelta(seconds=35)) == T0 + timedelta(seconds=40)


def test_interval_next_run_is_strictly_after_now_on_grid_point():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(seconds=10), start_date=T0)
    assert schedule.next_run(T0, T0 + timedelta(seconds=20)) == T0 + timedelta(seconds=30)


def test_interval_past_start_date_is_coalesced_for_first_run():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(hours=1), start_date=T0)
    assert schedule.first_run(T0 - timedelta(days=1)) == T0
    assert schedule.first_run(T0) == T0
    assert schedule.first_run(T0 + timedelta(hours=5, minutes=1)) == T0 + timedelta(hours=6)
    assert schedule.first_run(T0 + timedelta(hours=5)) == T0 + timedelta(hours=5)


def test_interval_has_no_drift_over_long_periods():
    s = _mod()
    interval = timedelta(microseconds=333_333)
    schedule = s.IntervalSchedule(interval, start_date=T0)
    now = T0 + timedelta(days=3650, microseconds=7)
    result = schedule.next_run(T0, now)
    assert (result - T0) % interval == timedelta(0)
    assert now < result <= now + interval


@pytest.mark.parametrize(
    "interval",
    [timedelta(0), timedelta(seconds=-1), -5, 0, "10", None, True],
)
def test_interval_rejects_non_positive_or_wrong_type(interval):
    s = _mod()
    with pytest.raises(s.ScheduleError, match="interval"):
        s.IntervalSchedule(interval)


def test_interval_accepts_seconds_as_number():
    s = _mod()
    assert s.IntervalSchedule(30).interval == timedelta(seconds=30)
    assert s.IntervalSchedule(1.5).interval == timedelta(seconds=1.5)


@given(
    interval_us=st.integers(min_value=1, max_value=10 * 86_400 * 1_000_000),
    start_offset_us=st.integers(min_value=-(10**12), max_value=10**12),
    scheduled_steps=st.integers(min_value=0, max_value=10_000),
    now_offset_us=st.integers(min_value=-(10**12), max_value=10**13),
)
@settings(max_examples=300, deadline=None)
def test_interval_next_run_properties(interval_us, start_offset_us, scheduled_steps, now_offset_us):
    s = _mod()
    interval = timedelta(microseconds=interval_us)
    start = T0 + timedelta(microseconds=start_offset_us)
    schedule = s.IntervalSchedule(interval, start_date=start)
    scheduled_at = start + scheduled_steps * interval
    now = scheduled_at + timedelta(microseconds=now_offset_us)
    result = schedule.next_run(scheduled_at, now)
    ref = max(scheduled_at, now)
    assert result > ref
    assert (result - start) % interval == timedelta(0)
    assert result - interval <= ref


# --- date -------------------------------------------------------------------


def test_date_runs_once_even_in_the_past():
    s = _mod()
    schedule = s.DateSchedule(T0)
    assert schedule.first_run(T0 + timedelta(days=3)) == T0
    assert schedule.first_run(T0 - timedelta(days=3)) == T0
    assert schedule.next_run(T0, T0) is None
    assert schedule.recurring is False
    assert schedule.describe() == "at 2026-01-01T12:00:00+00:00"


def test_date_normalises_to_utc():
    s = _mod()
    paris = s.get_zone("Europe/Paris")
    schedule = s.DateSchedule(datetime(2026, 7, 1, 12, 0, tzinfo=paris))
    assert schedule.run_at == _utc(2026, 7, 1, 10, 0)
    assert schedule.run_at.tzinfo is UTC


# --- cron -------------------------------------------------------------------


def test_cron_every_minute_over_ten_minutes_gives_ten_runs():
    s = _mod()
    schedule = s.CronSchedule("* * * * *")
    runs = _iterate(schedule, T0, T0 + timedelta(minutes=10))
    assert runs == [T0 + timedelta(minutes=n) for n in range(1, 11)]


def test_cron_coalesces_a_late_run_to_the_next_minute_after_now():
    s = _mod()
    schedule = s.CronSchedule("* * * * *")
    now = T0 + timedelta(minutes=5, seconds=30)
    assert schedule.next_run(T0, now) == T0 + timedelta(minutes=6)


def test_cron_six_fields_has_seconds_last():
    s = _mod()
    schedule = s.CronSchedule("* * * * * */15")
    assert _chain(schedule, T0, 5) == [T0 + timedelta(seconds=n) for n in (15, 30, 45, 60, 75)]


def test_cron_seven_fields_has_year_last_and_ends():
    s = _mod()
    schedule = s.CronSchedule("0 0 1 1 * 0 2028")
    assert schedule.first_run(T0) == _utc(2028, 1, 1)
    assert schedule.next_run(_utc(2028, 1, 1), _utc(2028, 1, 1)) is None


def test_cron_start_date_is_inclusive():
    s = _mod()
    start = _utc(2026, 2, 1, 0, 5)
    schedule = s.CronSchedule("*/5 * * * *", start_date=start)
    assert schedule.first_run(T0) == start
    assert schedule.next_run(T0, T0) == start
    assert schedule.first_run(start + timedelta(seconds=1)) == start + timedelta(minutes=5)


def test_cron_uses_schedule_timezone():
    s = _mod()
    schedule = s.CronSchedule("0 9 * * *", timezone="Asia/Tokyo")
    assert schedule.first_run(T0) == _utc(2026, 1, 2, 0, 0)


def test_cron_daily_paris_whole_year_once_per_local_day():
    s = _mod()
    schedule = s.CronSchedule("30 2 * * *", timezone="Europe/Paris")
    paris = s.get_zone("Europe/Paris")
    runs = _iterate(schedule, _utc(2025, 12, 31, 12), _utc(2026, 12, 31, 12))
    assert len(runs) == 365
    assert all(a < b for a, b in itertools.pairwise(runs))
    assert len({r.astimezone(paris).date() for r in runs}) == 365


def test_cron_hourly_new_york_fall_back_fires_every_utc_hour_once():
    s = _mod()
    schedule = s.CronSchedule("0 * * * *", timezone="America/New_York")
    start = _utc(2026, 11, 1, 2)
    runs = _chain(schedule, start, 8)
    assert runs == [start + timedelta(hours=n) for n in range(1, 9)]
    assert len(set(runs)) == len(runs)


def test_cron_hourly_new_york_spring_forward_has_no_duplicates():
    s = _mod()
    schedule = s.CronSchedule("0 * * * *", timezone="America/New_York")
    start = _utc(2026, 3, 8, 3)
    runs = _chain(schedule, start, 8)
    assert runs == [start + timedelta(hours=n) for n in range(1, 9)]


def test_cron_results_are_utc():
    s = _mod()
    schedule = s.CronSchedule("0 12 * * *", timezone="Europe/Paris")
    result = schedule.first_run(T0)
    assert result.tzinfo is UTC


def test_cron_describe():
    s = _mod()
    assert s.CronSchedule("*/5 * * * *", "Europe/Paris").describe() == (
        "cron */5 * * * * (Europe/Paris)"
    )
    assert s.IntervalSchedule(timedelta(seconds=30)).describe() == "every 30s"


@pytest.mark.parametrize(
    "expression",
    [
        "* * *",
        "not a cron",
        "",
        "* * * * * * * *",
        "0 0 30 2 *",
    ],
)
def test_cron_invalid_expression_message_names_expression_and_example(expression):
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.CronSchedule(expression)
    message = str(info.value)
    assert f"'{expression}'" in message
    assert "'*/5 * * * *'" in message
    assert "invalid cron expression" in message


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 32 * *", "day 32 is out of range 1-31"),
        ("0 0 0 * *", "day 0 is out of range 1-31"),
        ("0 0 1-40 * *", "day 40 is out of range 1-31"),
        ("0 0 1,32 * *", "day 32 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12 or jan-dec"),
        ("0 0 * 0 *", "month 0 is out of range 1-12 or jan-dec"),
        ("0 0 * * 8", "day_of_week 8 is out of range 0-7 (0 and 7 are Sunday) or sun-sat"),
        ("0 0 * * * 60", "second 60 is out of range 0-59"),
        ("61 0 * * * 0", "minute 61 is out of range 0-59"),
        ("0 0 1 1 * 0 1960", "year 1960 is out of range 1970-2099"),
        ("0 0 1 1 * 0 2100", "year 2100 is out of range 1970-2099"),
        ("0 0 * foo *", "month 'foo' is not a name this field knows; use 1-12 or jan-dec"),
        ("0 0 * jan-foo *", "month 'foo' is not a name this field knows"),
        ("0 0 * * funday", "day_of_week 'funday' is not a name this field knows; use 0-7"),
        ("mon * * * *", "minute 'mon' is not a number; use 0-59"),
        ("*/0 * * * *", "minute step 0 in '*/0' repeats nothing; use a step of 1 or more"),
        ("0 0 * * * 1-9/0", "second step 0 in '1-9/0' repeats nothing"),
    ],
)
def test_cron_range_error_names_the_field_and_its_range(expression, problem):
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.CronSchedule(expression)
    assert str(info.value).startswith(f"invalid cron expression {expression!r}: {problem}")
    assert "expected 5 fields" not in str(info.value)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("5-2 * * * *", "minute range 5-2 runs backwards; write '2-5', or '5-59,0-2' for a"),
        ("0 22-2 * * *", "hour range 22-2 runs backwards; write '2-22', or '22-23,0-2' for a"),
        ("0 0 * dec-feb *", "month range dec-feb runs backwards; write '2-12', or '12,1-2' for"),
        ("0 0 * * sat-mon", "day_of_week range sat-mon runs backwards"),
        ("*/70 * * * *", "minute step 70 in '*/70' is larger than the range 0-59"),
        ("0 */24 * * *", "hour step 24 in '*/24' is larger than the range 0-23"),
        ("0 0 * * * 5/60", "second step 60 in '5/60' is larger than the range 0-59"),
    ],
)
def test_new_cron_schedules_refuse_backwards_ranges_and_oversized_steps(expression, problem):
    s = _mod()
    with pytest.raises(s.ScheduleError, match="invalid cron expression") as info:
        s.check_cron_expression(expression)
    assert problem in str(info.value)
    # A schedule stored before this check keeps loading (croniter wraps such ranges).
    assert s.schedule_from_json({"kind": "cron", "expression": expression}).expression


@pytest.mark.parametrize(
    "expression",
    [
        "*/5 * * * *",
        "*/59 * * * *",
        "5/15 * * * *",
        "0 9-17/2 * * mon-fri",
        "0 0 * * 1-7",
        "0 0 * * sun-sat",
        "0 0 * * sat-sun",
        "0 0 * * 5-0",
        "0 0 * * 7",
        "0 0 * * */7",
        "0 0 1 jan,JUL *",
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 * * mon#2",
        "0 0 * * L5",
        "0 0 ? * *",
        "0 0 * * * */30",
        "0 0 1 1 * 0 2099",
    ],
)
def test_cron_field_checks_accept_every_valid_form(expression):
    s = _mod()
    s.check_cron_expression(expression)
    assert s.CronSchedule(expression).expression == expression


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"minute": 61}, "minute 61 is out of range 0-59"),
        ({"hour": 24}, "hour 24 is out of range 0-23"),
        ({"day": 0}, "day 0 is out of range 1-31"),
        ({"month": "foo"}, "month 'foo' is not a name this field knows; use 1-12 or jan-dec"),
        ({"day_of_week": "fri-mon"}, "day_of_week range fri-mon runs backwards"),
        ({"second": "*/0"}, "second step 0 in '*/0' repeats nothing"),
        ({"year": 2100}, "year 2100 is out of range 1970-2099"),
    ],
)
def test_cron_keyword_range_error_names_the_field_and_its_range(fields, problem):
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.cron_from_fields(**fields)
    assert str(info.value).startswith(problem)


def test_cron_wrong_field_count_still_says_how_many_fields():
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.CronSchedule("61 * * *")
    assert "it has 4 fields; expected 5 fields" in str(info.value)


def test_cron_rejects_non_string_expression():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="string"):
        s.CronSchedule(5)


def test_cron_rejects_unknown_timezone():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="Mars/Base"):
        s.CronSchedule("* * * * *", timezone="Mars/Base")


def test_cron_equality_by_value():
    s = _mod()
    assert s.CronSchedule("0  3 * * *") == s.CronSchedule("0 3 * * *", "UTC")
    assert s.CronSchedule("0 3 * * *") != s.CronSchedule("0 3 * * *", "Europe/Paris")
    assert s.IntervalSchedule(timedelta(seconds=5), T0) == s.IntervalSchedule(5, T0)
    assert s.DateSchedule(T0) == s.DateSchedule(T0.isoformat())


# --- cron_from_fields -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expression"),
    [
        ({"hour": 3}, "0 3 * * * 0"),
        ({"minute": "*/15"}, "*/15 * * * * 0"),
        ({"second": "*/10"}, "* * * * * */10"),
        ({"day": 1}, "0 0 1 * * 0"),
        ({"month": 6}, "0 0 1 6 * 0"),
        ({"day_of_week": "mon-fri"}, "0 0 * * mon-fri 0"),
        ({"day_of_week": "mon-fri", "hour": 9}, "0 9 * * mon-fri 0"),
        ({"month": 2, "minute": 30}, "30 * * 2 * 0"),
        ({"hour": "9-17", "minute": 0}, "0 9-17 * * * 0"),
        ({"day": "1,15", "hour": 6}, "0 6 1,15 * * 0"),
        ({"year": 2027}, "0 0 1 1 * 0 2027"),
        ({"year": 2027, "month": 3, "minute": 5}, "5 * * 3 * 0 2027"),
        ({"week": 10}, "0 0 * * * 0"),
    ],
)
def test_cron_from_fields_defaults(fields, expression):
    s = _mod()
    assert s.cron_from_fields(**fields).expression == expression


def test_cron_from_fields_hour_fires_daily_at_three():
    s = _mod()
    schedule = s.cron_from_fields(hour=3)
    assert _chain(schedule, T0, 2) == [_utc(2026, 1, 2, 3), _utc(2026, 1, 3, 3)]


def test_cron_from_fields_requires_a_field():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="at least one field"):
        s.cron_from_fields()


@pytest.mark.parametrize(
    "fields",
    [{"hour": 25}, {"minute": "x"}, {"week": 54}, {"week": "0-3"}, {"hour": True}, {"day": 1.5}],
)
def test_cron_from_fields_rejects_bad_values(fields):
    s = _mod()
    with pytest.raises(s.ScheduleError):
        s.cron_from_fields(**fields)


def test_cron_from_fields_day_of_week_uses_cron_numbering():
    s = _mod()
    sunday = s.cron_from_fields(day_of_week=0, hour=8)
    assert sunday.first_run(T0) == _utc(2026, 1, 4, 8)  # 2026-01-04 is a Sunday
    assert s.cron_from_fields(day_of_week=7, hour=8).first_run(T0) == _utc(2026, 1, 4, 8)
    assert s.cron_from_fields(day_of_week="sun", hour=8).first_run(T0) == _utc(2026, 1, 4, 8)


def test_cron_from_fields_week_filter_every_other_iso_week():
    s = _mod()
    schedule = s.cron_from_fields(week="*/2", hour=12)
    assert schedule.weeks == "*/2"
    runs = _iterate(schedule, _utc(2025, 12, 31), _utc(2026, 3, 1))
    assert runs
    assert {r.isocalendar()[1] % 2 for r in runs} == {1}
    # ISO week 1 of 2026 runs from 2025-12-29; week 2 (2026-01-05..11) is skipped.
    assert runs[:6] == [_utc(2025, 12, 31, 12)] + [_utc(2026, 1, d, 12) for d in (1, 2, 3, 4, 12)]


def test_cron_week_filter_jumps_weeks_for_dense_schedules():
    s = _mod()
    schedule = s.cron_from_fields(week=3, second="*/10")
    result = schedule.next_run(_utc(2026, 1, 4, 23, 59, 55), _utc(2026, 1, 4, 23, 59, 55))
    assert result == _utc(2026, 1, 12)


def test_cron_week_filter_gives_none_when_week_never_comes():
    s = _mod()
    # No day of 2028 is in an ISO week 53 (2028-01-01 is in week 52 of 2027).
    schedule = s.cron_from_fields(year=2028, week=53, hour=0)
    assert schedule.first_run(T0) is None
    # 2027-01-01..03 belong to ISO week 53 of 2026.
    schedule = s.cron_from_fields(year=2027, week=53, hour=0)
    assert _chain(schedule, T0, 4) == [_utc(2027, 1, d) for d in (1, 2, 3)] + [None]


def test_cron_from_fields_year_field():
    s = _mod()
    schedule = s.cron_from_fields(year=2027, month=6, day=15, hour=8)
    assert schedule.expression == "0 8 15 6 * 0 2027"
    assert schedule.first_run(T0) == _utc(2027, 6, 15, 8)
    assert schedule.next_run(_utc(2027, 6, 15, 8), _utc(2027, 6, 15, 8)) is None


def test_cron_from_fields_timezone_and_start_date():
    s = _mod()
    schedule = s.cron_from_fields(hour=9, timezone="Europe/Paris", start_date=_utc(2026, 6, 1))
    assert schedule.timezone == "Europe/Paris"
    assert schedule.first_run(T0) == _utc(2026, 6, 1, 7)


# --- ensure_aware / zones ---------------------------------------------------


def test_ensure_aware_converts_aware_non_utc():
    s = _mod()
    value = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    result = s.ensure_aware(value)
    assert result == _utc(2026, 1, 1, 8, 0)
    assert result.tzinfo is UTC


def test_ensure_aware_accepts_epoch_seconds():
    s = _mod()
    assert s.ensure_aware(0) == _utc(1970, 1, 1)
    assert s.ensure_aware(1.5) == datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)


def test_ensure_aware_accepts_iso_with_offset():
    s = _mod()
    assert s.ensure_aware("2026-01-01T10:00:00+01:00") == _utc(2026, 1, 1, 9)
    assert s.ensure_aware("2026-01-01T10:00:00Z") == _utc(2026, 1, 1, 10)


def test_ensure_aware_rejects_naive_datetime():
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.ensure_aware(datetime(2026, 1, 1, 10, 0), name="run_at")
    message = str(info.value)
    assert "naive" in message
    assert "tzinfo" in message
    assert message.startswith("run_at:")
    assert "2026-01-01 10:00:00" in message


def test_ensure_aware_rejects_iso_without_offset():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="offset"):
        s.ensure_aware("2026-01-01T10:00:00")


@pytest.mark.parametrize("value", [True, False, None, [], object(), float("nan"), "garbage"])
def test_ensure_aware_rejects_other_types(value):
    s = _mod()
    with pytest.raises(s.ScheduleError):
        s.ensure_aware(value)


def test_ensure_aware_names_the_type():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="bool"):
        s.ensure_aware(True)
    with pytest.raises(s.ScheduleError, match="list"):
        s.ensure_aware([])


def test_get_zone_unknown_name():
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.get_zone("Mars/Base")
    assert "Mars/Base" in str(info.value)
    assert "IANA" in str(info.value)


def test_get_zone_and_zone_name():
    s = _mod()
    paris = s.get_zone("Europe/Paris")
    assert s.zone_name(paris) == "Europe/Paris"
    assert s.get_zone(None) is UTC
    assert s.get_zone("UTC") is UTC
    assert s.zone_name(UTC) == "UTC"
    assert s.get_zone(paris) is paris


def test_zone_name_rejects_fixed_offsets():
    s = _mod()
    with pytest.raises(s.ScheduleError, match="IANA"):
        s.zone_name(timezone(timedelta(hours=2)))


# --- JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda s: s.DateSchedule(T0),
        lambda s: s.IntervalSchedule(timedelta(seconds=2)),
        lambda s: s.IntervalSchedule(timedelta(days=3, microseconds=7), start_date=T0),
        lambda s: s.IntervalSchedule(timedelta(microseconds=1)).anchored(T0),
        lambda s: s.CronSchedule("*/5 * * * *"),
        lambda s: s.CronSchedule("30 2 * * *", "Europe/Paris", start_date=T0, weeks="1-10"),
        lambda s: s.cron_from_fields(week="*/2", hour=12, timezone="America/New_York"),
        lambda s: s.CronSchedule("0 0 1 1 * 0 2030"),
    ],
)
def test_json_round_trip(factory):
    import json

    s = _mod()
    schedule = factory(s)
    data = json.loads(json.dumps(schedule.to_json()))
    assert data["kind"] == schedule.kind
    restored = s.schedule_from_json(data)
    assert restored == schedule
    assert type(restored) is type(schedule)
    assert restored.to_json() == schedule.to_json()


def test_json_interval_is_exact_to_the_microsecond():
    s = _mod()
    schedule = s.IntervalSchedule(timedelta(days=9999, microseconds=123457), start_date=T0)
    data = schedule.to_json()
    assert data == {
        "kind": "interval",
        "microseconds": 9999 * 86_400_000_000 + 123457,
        "start": "2026-01-01T12:00:00+00:00",
    }
    assert s.schedule_from_json(data).interval == schedule.interval


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "date",
        {},
        {"kind": "nope"},
        {"kind": 3},
        {"kind": "date"},
        {"kind": "date", "run_at": None},
        {"kind": "date", "run_at": 12},
        {"kind": "date", "run_at": "2026-01-01T10:00:00"},
        {"kind": "date", "run_at": "yesterday"},
        {"kind": "interval"},
        {"kind": "interval", "microseconds": "10"},
        {"kind": "interval", "microseconds": 1.5},
        {"kind": "interval", "microseconds": True},
        {"kind": "interval", "microseconds": 0},
        {"kind": "interval", "microseconds": -5},
        {"kind": "interval", "microseconds": 10**30},
        {"kind": "interval", "microseconds": 10, "start": 5},
        {"kind": "interval", "microseconds": 10, "start": "bad"},
        {"kind": "cron"},
        {"kind": "cron", "expression": None},
        {"kind": "cron", "expression": "61 * * * *"},
        {"kind": "cron", "expression": "* * * * *", "timezone": "Mars/Base"},
        {"kind": "cron", "expression": "* * * * *", "timezone": 1},
        {"kind": "cron", "expression": "* * * * *", "weeks": "99"},
        {"kind": "cron", "expression": "* * * * *", "weeks": [1]},
        {"kind": "cron", "expression": "* * * * *", "start": "2026-01-01"},
    ],
)
def test_json_malformed_raises_schedule_error(data):
    s = _mod()
    with pytest.raises(s.ScheduleError):
        s.schedule_from_json(data)


def test_schedule_error_is_value_error():
    s = _mod()
    assert issubclass(s.ScheduleError, ValueError)


# --------------------------------------------------------------------------- stored JSON shape


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "date", "run_at": "2030-01-01T12:00:00+00:00"},
        {"kind": "interval", "microseconds": 60_000_000, "start": None},
        {"kind": "cron", "expression": "*/5 * * * *", "timezone": "UTC", "weeks": "1-10"},
    ],
    ids=["date", "interval", "cron"],
)
def test_schedule_json_every_kind_writes_has_no_problem(schedule):
    assert _mod().schedule_json_problem(schedule) is None


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        pytest.param(
            {"kind": "weekly"},
            "schedule has the unknown kind 'weekly' (expected date, interval or cron)",
            id="unknown-kind",
        ),
        pytest.param(
            {"kind": ["cron"]},
            "schedule has the unknown kind ['cron'] (expected date, interval or cron)",
            id="unhashable-kind",
        ),
        pytest.param(
            {"kind": "interval", "microseconds": 0},
            "interval schedule is malformed: {'kind': 'interval', 'microseconds': 0}",
            id="zero-interval",
        ),
        pytest.param(
            {"kind": "date", "run_at": 5},
            "date schedule is malformed: {'kind': 'date', 'run_at': 5}",
            id="date-not-text",
        ),
        pytest.param(
            {"kind": "cron", "expression": "61 * * * *"},
            "schedule is unreadable (",
            id="cron-does-not-parse",
        ),
    ],
)
def test_schedule_json_problem_describes_what_no_version_writes(schedule, problem):
    assert _mod().schedule_json_problem(schedule).startswith(problem)


def test_schedule_kinds_come_from_the_schedule_classes():
    schedules = _mod()
    assert schedules.SCHEDULE_KINDS == ("date", "interval", "cron")
    assert schedules.RECURRING_KINDS == ("interval", "cron")


def test_cron_field_names_run_from_the_most_significant_field():
    assert _mod().CRON_FIELD_NAMES == (
        "year",
        "month",
        "day",
        "week",
        "day_of_week",
        "hour",
        "minute",
        "second",
    )


def test_cron_from_fields_refuses_a_field_it_does_not_know():
    s = _mod()
    with pytest.raises(s.ScheduleError) as info:
        s.cron_from_fields(hours=3)
    assert str(info.value) == (
        "cron_from_fields() got the unknown field(s) hours; the fields are year, month, day, "
        "week, day_of_week, hour, minute, second"
    )


def test_add_cron_job_takes_the_cron_fields_in_the_same_order():
    import inspect

    from pyramid_pyncette.scheduler import Scheduler

    keywords = list(inspect.signature(Scheduler.add_cron_job).parameters)
    fields = [name for name in keywords if name in _mod().CRON_FIELD_NAMES]
    assert tuple(fields) == _mod().CRON_FIELD_NAMES

"""Cron schedules across daylight saving time changes, in the style of published DST cases.

Each case gives a cron expression, a zone, an instant to start after and the
next runs in UTC, worked out by hand from the rules documented on
:class:`~pyramid_pyncette.schedules.CronSchedule`: the expression is read in
the zone; a wall time skipped by a spring-forward change fires at the first
instant after the gap; a wall time repeated by a fall-back change fires once
(the first time) unless the hour field is ``*``.

These depend on croniter doing its part: releases that compute some of them
wrong exist (see the croniter floor in pyproject.toml), and this table is how
the lowest-versions test run shows it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

UTC = timezone.utc


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# 2026: Europe springs forward on 29 March at 01:00 UTC and falls back on
# 25 October at 01:00 UTC; New York on 8 March at 07:00 UTC and 1 November at
# 06:00 UTC; Sydney falls back on 5 April at 16:00 UTC (4 April) and springs
# forward on 4 October at 16:00 UTC (3 October).
CASES = {
    # Local midnight is 23:00 UTC in winter, 22:00 UTC in summer: never 23:00
    # local the day before.
    "warsaw-midnight-spring": (
        "0 0 * * *",
        "Europe/Warsaw",
        _utc(2026, 3, 27, 12),
        [
            _utc(2026, 3, 27, 23),
            _utc(2026, 3, 28, 23),
            _utc(2026, 3, 29, 22),
            _utc(2026, 3, 30, 22),
        ],
    ),
    "warsaw-midnight-fall": (
        "0 0 * * *",
        "Europe/Warsaw",
        _utc(2026, 10, 23, 12),
        [
            _utc(2026, 10, 23, 22),
            _utc(2026, 10, 24, 22),
            _utc(2026, 10, 25, 23),
            _utc(2026, 10, 26, 23),
        ],
    ),
    # 02:01 does not exist on 29 March in Paris: 03:00 CEST, not the next day.
    "paris-0201-spring": (
        "1 2 * * *",
        "Europe/Paris",
        _utc(2026, 3, 27, 12),
        [_utc(2026, 3, 28, 1, 1), _utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 1)],
    ),
    "paris-0201-fall": (
        "1 2 * * *",
        "Europe/Paris",
        _utc(2026, 10, 23, 12),
        [_utc(2026, 10, 24, 0, 1), _utc(2026, 10, 25, 0, 1), _utc(2026, 10, 26, 1, 1)],
    ),
    # 02:30 does not exist on 29 March in Paris: 03:00 CEST (01:00 UTC).
    "paris-0230-spring": (
        "30 2 * * *",
        "Europe/Paris",
        _utc(2026, 3, 27),
        [
            _utc(2026, 3, 27, 1, 30),
            _utc(2026, 3, 28, 1, 30),
            _utc(2026, 3, 29, 1, 0),
            _utc(2026, 3, 30, 0, 30),
            _utc(2026, 3, 31, 0, 30),
        ],
    ),
    # 02:30 comes twice on 25 October in Paris: it fires once, the first time.
    "paris-0230-fall": (
        "30 2 * * *",
        "Europe/Paris",
        _utc(2026, 10, 23),
        [
            _utc(2026, 10, 23, 0, 30),
            _utc(2026, 10, 24, 0, 30),
            _utc(2026, 10, 25, 0, 30),
            _utc(2026, 10, 26, 1, 30),
            _utc(2026, 10, 27, 1, 30),
        ],
    ),
    "paris-0200-spring": (
        "0 2 * * *",
        "Europe/Paris",
        _utc(2026, 3, 28, 12),
        [_utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 0)],
    ),
    "warsaw-0230-spring": (
        "30 2 * * *",
        "Europe/Warsaw",
        _utc(2026, 3, 28, 12),
        [_utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 30)],
    ),
    "warsaw-0230-fall": (
        "30 2 * * *",
        "Europe/Warsaw",
        _utc(2026, 10, 24, 12),
        [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)],
    ),
    "warsaw-0300-fall": (
        "0 3 * * *",
        "Europe/Warsaw",
        _utc(2026, 10, 24, 12),
        [_utc(2026, 10, 25, 2), _utc(2026, 10, 26, 2)],
    ),
    "new-york-0230-spring": (
        "30 2 * * *",
        "America/New_York",
        _utc(2026, 3, 6, 12),
        [_utc(2026, 3, 7, 7, 30), _utc(2026, 3, 8, 7, 0), _utc(2026, 3, 9, 6, 30)],
    ),
    "new-york-0130-fall": (
        "30 1 * * *",
        "America/New_York",
        _utc(2026, 10, 30, 12),
        [_utc(2026, 10, 31, 5, 30), _utc(2026, 11, 1, 5, 30), _utc(2026, 11, 2, 6, 30)],
    ),
    "new-york-hourly-fall": (
        "0 * * * *",
        "America/New_York",
        _utc(2026, 11, 1, 4, 30),
        [_utc(2026, 11, 1, 5), _utc(2026, 11, 1, 6), _utc(2026, 11, 1, 7), _utc(2026, 11, 1, 8)],
    ),
    "paris-half-hourly-spring": (
        "*/30 * * * *",
        "Europe/Paris",
        _utc(2026, 3, 29, 0, 15),
        [_utc(2026, 3, 29, 0, 30), _utc(2026, 3, 29, 1, 0), _utc(2026, 3, 29, 1, 30)],
    ),
    "paris-half-hourly-fall": (
        "*/30 * * * *",
        "Europe/Paris",
        _utc(2026, 10, 25, 0, 15),
        [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1, 0), _utc(2026, 10, 25, 1, 30)],
    ),
    "sydney-0200-spring": (
        "0 2 * * *",
        "Australia/Sydney",
        _utc(2026, 10, 2, 12),
        [_utc(2026, 10, 2, 16), _utc(2026, 10, 3, 16), _utc(2026, 10, 4, 15)],
    ),
    "sydney-0230-fall": (
        "30 2 * * *",
        "Australia/Sydney",
        _utc(2026, 4, 3, 0),
        [_utc(2026, 4, 3, 15, 30), _utc(2026, 4, 4, 15, 30), _utc(2026, 4, 5, 16, 30)],
    ),
    "warsaw-sunday-midnight-spring": (
        "0 0 * * 0",
        "Europe/Warsaw",
        _utc(2026, 3, 25),
        [_utc(2026, 3, 28, 23), _utc(2026, 4, 4, 22)],
    ),
    "warsaw-first-of-month": (
        "0 0 1 * *",
        "Europe/Warsaw",
        _utc(2026, 3, 15),
        [_utc(2026, 3, 31, 22), _utc(2026, 4, 30, 22)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cron_next_runs_across_daylight_saving_changes(case):
    from pyramid_pyncette.schedules import CronSchedule

    expression, zone, after, expected = CASES[case]
    schedule = CronSchedule(expression, timezone=zone)
    runs = []
    current = after
    for _ in expected:
        current = schedule.next_run(current, current)
        runs.append(current)
    assert runs == expected


@pytest.mark.parametrize("case", list(CASES))
def test_cron_first_run_across_daylight_saving_changes(case):
    """``first_run`` (how a new job gets its first due time) agrees with the chain."""
    from pyramid_pyncette.schedules import CronSchedule

    expression, zone, after, expected = CASES[case]
    assert CronSchedule(expression, timezone=zone).first_run(after) == expected[0]

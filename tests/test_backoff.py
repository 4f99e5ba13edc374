"""Waiting out a store outage: exponential delays, capped, jittered on request."""

from __future__ import annotations

import pytest


def _makeOne(*args, **kwargs):
    from pyramid_pyncette.backoff import Backoff

    return Backoff(*args, **kwargs)


def test_delays_double_from_first_up_to_the_cap():
    backoff = _makeOne(first=0.2, cap=2.0)
    assert [backoff.next_delay() for _ in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff.failures == 6


def test_reset_starts_again_from_first():
    backoff = _makeOne(first=0.4, cap=30.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == pytest.approx(0.4)


def test_jitter_scales_each_delay_by_a_factor_between_one_minus_jitter_and_one():
    draws = []

    def lowest(low, high):
        draws.append((low, high))
        return low

    backoff = _makeOne(first=0.1, cap=30.0, jitter=0.5, uniform=lowest)
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([0.05, 0.1, 0.2])
    assert draws == [(0.5, 1.0)] * 3


def test_real_jitter_stays_within_its_bounds():
    backoff = _makeOne(first=1.0, cap=8.0, jitter=0.5)
    for ceiling in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_a_long_outage_stays_at_the_cap():
    backoff = _makeOne(first=0.1, cap=30.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 30.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first": 0, "cap": 1.0}, "0 < first <= cap"),
        ({"first": 2.0, "cap": 1.0}, "0 < first <= cap"),
        ({"first": 1.0, "cap": 2.0, "jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_bad_parameters_are_refused_with_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _makeOne(**kwargs)

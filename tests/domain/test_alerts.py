"""Thresholds: validation, and the crossing rule that makes alerts once per period."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenquota.domain.alerts import MAX_PERCENT, crossed, parse_thresholds
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import UNLIMITED


def test_thresholds_are_sorted_without_repeats() -> None:
    assert parse_thresholds([100, 50, 80, 50]) == (50, 80, 100)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("80", "thresholds"),
        ([80, "90"], "thresholds[1]"),
        ([True], "thresholds[0]"),
        ([0], "thresholds[0]"),
        ([MAX_PERCENT + 1], "thresholds[0]"),
        (list(range(1, 12)), "thresholds"),
    ],
)
def test_bad_thresholds_name_the_field(value: object, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_thresholds(value)
    assert raised.value.field == field


def test_a_mark_is_crossed_by_the_step_that_reaches_it() -> None:
    assert crossed((50, 80, 100), 1000, 0, 499) == ()
    assert crossed((50, 80, 100), 1000, 499, 500) == (50,)
    assert crossed((50, 80, 100), 1000, 500, 800) == (80,)
    assert crossed((50, 80, 100), 1000, 0, 1000) == (50, 80, 100)
    assert crossed((50, 80, 100), 1000, 1000, 1500) == ()


def test_exact_integers_for_fractional_marks() -> None:
    # 80 % of 3 units is 2.4: the step to 3 crosses it, the step to 2 does not.
    assert crossed((80,), 3, 1, 2) == ()
    assert crossed((80,), 3, 2, 3) == (80,)


def test_unlimited_falling_and_zero_limits() -> None:
    assert crossed((50,), UNLIMITED, 0, 10**12) == ()
    assert crossed((50,), 100, 90, 10) == ()
    assert crossed((50, 100), 0, 0, 1) == (50, 100)
    assert crossed((50, 100), 0, 1, 2) == ()


@given(
    limit=st.integers(min_value=0, max_value=10**9),
    steps=st.lists(st.integers(min_value=0, max_value=10**8), max_size=40),
    thresholds=st.lists(st.integers(min_value=1, max_value=MAX_PERCENT), max_size=10),
)
def test_any_sequence_of_steps_crosses_each_reached_mark_exactly_once(
    limit: int, steps: list[int], thresholds: list[int]
) -> None:
    marks = parse_thresholds(thresholds)
    used, seen = 0, list[int]()
    for amount in steps:
        seen += crossed(marks, limit, used, used + amount)
        used += amount
    reached = [t for t in marks if used * 100 >= t * limit and used > 0]
    assert sorted(seen) == reached

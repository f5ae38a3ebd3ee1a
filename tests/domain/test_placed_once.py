"""What is computed once per span answers what computing it per request answers.

Three fast paths keep an answer while the instant asked about stays in a
span where it cannot change (issue 13, the memory backend's warm path):

- ``Window.bucket_span``: the instants counted in one bucket;
- the planner's ``Layout``: a skeleton's calendar and ``total`` checks placed
  once per span of all their periods, compared with ``Planner.check`` per limit;
- the memory state's ``Counting``: an event's buckets placed once per span,
  compared with ``ledger.increments``, which places each afresh.

Instants walk forwards, backwards and across DST nights (Stockholm, and Lord
Howe's half-hour shift), in small and large steps. ``Amounts.parse``'s quick path (the
amounts of a known shape) is compared with ``Amounts.parse_each``, name by name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

import tokenquota
from tokenquota import FrozenClock
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.ledger import increments
from tokenquota.domain.limits import UNLIMITED, EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import COUNTERS, Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.domain.windows import TOTAL, Window
from tokenquota.engine.planner import Layout
from tokenquota.storage.memory.state import State

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Stockholm", "Australia/Lord_Howe")]
START = datetime(2026, 3, 28, 22, 59, 59, 999_999, tzinfo=UTC)  # the eve of a DST change
WINDOWS = [
    Window.parse(w)
    for w in ("minute", "hour", "day", "week", "month", "year", "rolling:1h", "rolling:2d")
] + [TOTAL]
STEPS = st.lists(
    st.one_of(
        st.integers(-90 * 10**6, 90 * 10**6),  # around a minute
        st.integers(-3 * 86_400 * 10**6, 3 * 86_400 * 10**6),  # days
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(window=st.sampled_from(WINDOWS), zone=st.sampled_from(ZONES), steps=STEPS)
def test_a_bucket_span_holds_the_instants_of_its_bucket(
    window: Window, zone: ZoneInfo, steps: list[int]
) -> None:
    at = START
    tick = timedelta(microseconds=1)
    for step in steps:
        at += timedelta(microseconds=step)
        start, end = window.bucket_span(at, zone)
        bucket = window.bucket_of(at, zone)
        assert start <= at < end
        if window.is_total:
            continue
        assert window.bucket_of(start, zone) == bucket
        assert window.bucket_of(end - tick, zone) == bucket
        assert window.bucket_of(start - tick, zone) != bucket
        assert window.bucket_of(end, zone) != bucket


@st.composite
def limits(draw: st.DrawFn) -> list[EffectiveLimit]:
    alice = SubjectRef("user", "alice")
    out = []
    for _ in range(draw(st.integers(1, 6))):
        metric = draw(st.sampled_from(list(Metric)))
        window = draw(st.sampled_from(WINDOWS)) if metric.is_counter else None
        out.append(
            EffectiveLimit(alice, LimitKey(metric, window), UNLIMITED, Source.OVERRIDE, False)
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    chosen=limits(),
    zone=st.sampled_from(ZONES),
    steps=STEPS,
    back=st.lists(st.sampled_from([0, 0, 0, 30, 3_600, 90_000, 400_000]), min_size=25),
)
def test_a_layout_places_each_check_as_the_planner_does(
    chosen: list[EffectiveLimit], zone: ZoneInfo, steps: list[int], back: list[int]
) -> None:
    quota = tokenquota.open("memory://", timezone=zone.key, clock=FrozenClock(START))
    planner = quota.planner
    amounts = Amounts({Metric.TOKENS: 7, Metric.INPUT_TOKENS: 3, Metric.REQUESTS: 1})
    for intent in ("consume", "acquire"):
        kept = tuple(
            limit
            for limit in chosen
            if (limit.key.metric is Metric.CONCURRENT_REQUESTS) == (intent == "acquire")
        )
        layout = Layout(kept)
        now = START
        for step, seconds in zip(steps, back, strict=False):
            now += timedelta(microseconds=step)
            at = now - timedelta(seconds=seconds)
            expected = tuple(planner.check(limit, amounts, at, now, intent) for limit in kept)
            assert layout.checks(amounts, at, now, zone) == expected


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    steps=STEPS,
    tracked=st.sets(st.sampled_from(WINDOWS), min_size=1),
    carried=st.sets(st.sampled_from(COUNTERS), min_size=1),
)
def test_counting_adds_what_increments_lists(
    zone: ZoneInfo, steps: list[int], tracked: set[Window], carried: set[Metric]
) -> None:
    state = State(zone)
    # The user's kind counts the windows, the company only the lifetime pairs (wildcard).
    state.tracked = Tracking({"user": {LimitKey(m, w) for m in COUNTERS for w in tracked}})
    series = ("user:alice", "company:acme")
    amounts = Amounts({metric: i + 1 for i, metric in enumerate(sorted(carried))})
    counting = state.shape(series, amounts)
    expected: dict[tuple[str, str, str, int], int] = defaultdict(int)
    at = START
    for step in steps:
        at += timedelta(microseconds=step)
        counting.add(at, zone, dict(amounts.items()))
        for key, units in increments(series, amounts, at, zone, state.tracked).items():
            expected[key] += units
    live = {
        (s, m, w, bucket): units
        for (s, m, w), buckets in state.counters.items()
        for bucket, units in buckets.items()
    }
    assert live == dict(expected)


NAMES = [
    "tokens",
    "input_tokens",
    "output_tokens",
    "requests",
    "credits",
    "concurrent_requests",
    "input_sequence_length",
    "bogus",
]
VALUES = st.one_of(
    st.integers(-5, 2**64),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, True, False, None, 1.0, 1.5, "3", Decimal("2")]),
)


@settings(max_examples=500, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4))
def test_parse_is_parse_each(raw: dict[str, object]) -> None:
    for _ in range(2):  # the second time from the names it remembered
        assert answer(Amounts.parse, raw) == answer(Amounts.parse_each, raw)


def answer(parse: Callable[[dict[str, object]], Amounts], raw: dict[str, object]) -> object:
    """The amounts in their order (the wire's), or the error's field and text."""
    try:
        return list(parse(raw).items())
    except ValidationError as error:
        return (error.field, str(error))

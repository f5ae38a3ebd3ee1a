"""A consume's event body framed once per shape (storage/redis/bodies.py) is the row's JSON.

The mover inserts what the step appended unchanged, so the framed body must be
``orjson.dumps(event_row(usage_event(plan)))`` byte for byte, for every plan it
frames; a plan it does not frame (a model, tags, an idempotency key, a
resource, amounts past 64 bits) is left to the long way (None).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.domain.decisions import DebitPlan, Mode
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.redis.bodies import UsageBodies, row_of

ANN = SubjectRef("user", "ann")
BOB = SubjectRef("user", "b.o-b@x_1")
ACME = SubjectRef("company", "acme")
CHAINS = [(ANN, ACME), (ANN,), (BOB, ACME)]
NOW = datetime(2026, 3, 31, 21, 58, 59, 500_001, tzinfo=UTC)
COUNTED = [Metric.TOKENS, Metric.INPUT_TOKENS, Metric.REQUESTS, Metric.CREDITS]


def plan(
    charged: tuple[SubjectRef, ...],
    units: dict[Metric, int],
    mode: Mode,
    back: int,
    **extra: object,
) -> DebitPlan:
    return DebitPlan(
        subject=charged[0],
        charged=charged,
        amounts=Amounts(units),
        mode=mode,
        timestamp=NOW - timedelta(microseconds=back),
        now=NOW,
        tz=ZoneInfo("UTC"),
        checks=(),
        **extra,  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(
            st.sampled_from(range(len(CHAINS))),
            st.dictionaries(st.sampled_from(COUNTED), st.integers(0, 2**63 - 1), max_size=4),
            st.sampled_from([Mode.ENFORCE, Mode.RECORD]),
            st.integers(0, 10**13),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_framed_body_is_the_rows_json(
    shapes: list[tuple[int, dict[Metric, int], Mode, int]],
) -> None:
    bodies = UsageBodies()  # one for the run: later plans reuse the frames of earlier ones
    for chain, units, mode, back in shapes:
        p = plan(CHAINS[chain], units, mode, back)
        assert bodies.of(p) == orjson.dumps(row_of(p))


def test_a_plan_it_does_not_frame_is_left_to_the_long_way() -> None:
    bodies = UsageBodies()
    chain = CHAINS[0]
    units = {Metric.TOKENS: 5}
    assert bodies.of(plan(chain, units, Mode.ENFORCE, 0)) is not None
    for extra in (
        {"model": "gpt"},
        {"tags": {"team": "a"}},
        {"idempotency_key": "k1"},
        {"resource": SubjectRef("deployment", "llama")},
    ):
        assert bodies.of(plan(chain, units, Mode.ENFORCE, 0, **extra)) is None
    assert bodies.of(plan(chain, {Metric.TOKENS: 2**64}, Mode.ENFORCE, 0)) is None


def test_an_equal_chain_of_another_tuple_or_subject_gets_its_own_frame() -> None:
    bodies = UsageBodies()
    first = plan((ANN, ACME), {Metric.TOKENS: 1}, Mode.ENFORCE, 0)
    assert bodies.of(first) == orjson.dumps(row_of(first))
    # the same chain as another tuple, and a plan whose subject is not the first charged
    other = plan((ANN, ACME), {Metric.TOKENS: 2}, Mode.ENFORCE, 0)
    assert bodies.of(other) == orjson.dumps(row_of(other))
    shifted = DebitPlan(
        subject=BOB,
        charged=first.charged,
        amounts=first.amounts,
        mode=first.mode,
        timestamp=first.timestamp,
        now=first.now,
        tz=first.tz,
        checks=(),
    )
    assert bodies.of(shifted) == orjson.dumps(row_of(shifted))
    assert b'"subject":"user:b.o-b@x_1"' in (bodies.of(shifted) or b"")

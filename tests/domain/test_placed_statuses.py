"""An admitted placed plan's statuses, made from its span's rows, are ``_statuses``'.

``decisions.admitted`` builds the statuses of a plan made with a ``Placement``
from rows kept per placement (names, limit, reset_at), filling in only the
numbers. One ``Layout`` serves many requests here, at instants inside a span
and across spans (and DST nights), so the kept rows are reused and replaced;
each decision must equal the one built from the plan's own checks.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain.test_admitted import one_bucket
from tests.domain.test_decide_oracle import cases, check_of
from tests.domain.test_placed_plan import placed
from tokenquota.domain.decisions import DebitPlan, Reading, admitted
from tokenquota.engine.planner import Layout


@settings(max_examples=150, deadline=None)
@given(
    case=cases(),
    steps=st.lists(st.integers(0, 40 * 86_400), min_size=1, max_size=6),
    data=st.data(),
)
def test_statuses_from_a_span_s_rows_are_those_of_the_checks(
    case: tuple[DebitPlan, list[Reading], object], steps: list[int], data: st.DataObject
) -> None:
    first, _, _ = case
    if not one_bucket(first) or first.capacity is not None:
        return
    limits = tuple(check.limit for check in first.checks)
    layout = Layout(limits)
    for seconds in [0, 0, *steps]:  # the same span twice, then others (and back)
        at = first.timestamp + timedelta(seconds=seconds % (7 * 86_400) if seconds % 3 else seconds)
        checks = tuple(check_of(lim, first.amounts, at, at, first.tz) for lim in limits)
        plan = DebitPlan(
            first.subject,
            first.charged,
            first.amounts,
            first.mode,
            at,
            at,
            first.tz,
            checks,
            hold=first.hold,
        )
        placement = layout.placement(at, plan.tz)
        assert placement is not None
        # Often exactly what fills the limit: within_limit turns there.
        used = [
            data.draw(st.sampled_from([max(0, c.limit.value - c.amount), 0, 1, 39, 80]))
            if c.limit.key.window is not None
            else 0
            for c in checks
        ]
        fast = admitted(placed(plan, placement), used, 7)
        slow = admitted(plan, used, 7)
        assert (fast is None) == (slow is None)
        if fast is not None and slow is not None:
            assert fast.limits == slow.limits
            assert repr(fast) == repr(slow)

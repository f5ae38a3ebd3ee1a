"""Decision.visible_to and Decision.tightest: pure, no store (contract §10; issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reason, Scope, WithheldBlock
from tokenquota.wire.decisions import decode_decision, encode_decision

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def status(
    subject: str, metric: str, limit: int | Decimal, remaining: int | Decimal, **kw: object
) -> LimitStatus:
    fields: dict[str, object] = {
        "subject": subject,
        "metric": metric,
        "window": "day",
        "limit": limit,
        "source": "override",
        "shadow": False,
        "used": limit - remaining,
        "reserved": 0,
        "remaining": remaining,
        "reset_at": NOW + timedelta(hours=12),
        "within_limit": remaining > 0,
    }
    fields.update(kw)
    return LimitStatus(**fields)  # type: ignore[arg-type]


def decision(limits: tuple[LimitStatus, ...], blocked: tuple[LimitStatus, ...] = ()) -> Decision:
    return Decision(
        allowed=not blocked,
        subject="user:alice",
        mode=Mode.ENFORCE,
        amounts={"tokens": 10},
        timestamp=NOW,
        limits=limits,
        blocked_by=blocked,
        retry_after=600 if blocked else None,
        reason=Reason.LIMIT_REACHED.value if blocked else None,
    )


def test_a_member_sees_its_own_statuses_and_only_the_reason_of_an_ancestors_refusal() -> None:
    own = status("user:alice", "tokens", 1_000, 900)
    company = status("company:acme", "tokens", 100, 0, reason="limit_reached")
    share = status("deployment:x~user:alice", "requests", 2, 0, source="resource")
    full = decision((own, company, share), (company, share))
    seen = full.visible_to(Scope(frozenset({"user:alice"})))
    assert seen.limits == (own,)
    assert seen.blocked_by == ()
    assert seen.blocked_outside == (
        WithheldBlock(Reason.ANCESTOR_LIMIT, "tokens"),
        WithheldBlock(Reason.RESOURCE_LIMIT, "requests"),
    )
    assert (seen.retry_after, seen.reason) == (600, "limit_reached")
    assert "acme" not in repr(encode_decision(seen))
    assert "deployment" not in seen.denial()
    assert decode_decision(encode_decision(seen)) == seen


def test_the_tightest_limit_is_the_smallest_remaining_fraction() -> None:
    credits = status("user:alice", "credits", Decimal("10.5"), Decimal("10.4"))
    tokens = status("user:alice", "tokens", 100, 50)
    assert decision((credits, tokens)).tightest(NOW) == tokens


def test_the_tightest_limit_is_never_one_whose_period_has_ended() -> None:
    yesterday = status("user:alice", "tokens", 100, 1, reset_at=NOW - timedelta(hours=1))
    month = status("user:alice", "requests", 1_000, 900, window="month")
    assert decision((yesterday, month)).tightest(NOW) == month
    assert decision((yesterday,)).tightest(NOW) is None


_NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=3),  # small: ties, zero limits, nothing left
    st.sampled_from([Decimal("0.5"), Decimal("1.5"), Decimal(2)]),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False),
)


@given(
    st.lists(st.tuples(_NUMBERS, _NUMBERS, st.booleans(), st.booleans()), min_size=1, max_size=6)
)
def test_the_tightest_limit_is_the_first_of_the_smallest_exact_fractions(
    rows: list[tuple[int | Decimal, int | Decimal, bool, bool]],
) -> None:
    # The reference: min() over exact Fractions, a period's end before none, as the
    # answer was chosen before it compared cross-multiplied numerators (session 10).
    statuses = tuple(
        status(
            "user:alice",
            f"m{i}",
            limit,
            remaining,
            reset_at=NOW + timedelta(hours=1) if timed else None,
            within_limit=not denied,
        )
        for i, (limit, remaining, timed, denied) in enumerate(rows)
    )

    def left(s: LimitStatus) -> Fraction:
        assert s.remaining is not None
        return Fraction(s.remaining) / Fraction(s.limit) if s.limit > 0 else Fraction(0)

    assert decision(statuses).tightest(NOW) is min(
        statuses, key=lambda s: (left(s), s.reset_at is None)
    )

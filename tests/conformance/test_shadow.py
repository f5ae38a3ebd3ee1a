"""Shadow rules beside enforced ones (contract §4), the same on every backend.

A shadow rule takes no part in choosing the enforced limit: it is measured
beside it, counts what it would have blocked, and never loosens anything.
"""

from __future__ import annotations

from tokenquota import Quota
from tokenquota.wire.catalog import encode_effective_limit


def _effective(quota: Quota, ref: str) -> list[tuple[str, str | None, object, str, bool]]:
    return [
        (
            e.key.metric.value,
            e.key.window_key or None,
            encode_effective_limit(e)["limit"],
            e.source.value,
            e.shadow,
        )
        for e in quota.limits(ref).effective
    ]


def test_a_shadow_override_does_not_switch_off_the_default_under_it(quota: Quota) -> None:
    """The audit's case: default 100/day, then a shadow override of 50."""
    quota.set_default("user", "tokens", "day", 100)
    assert not quota.consume("user:x", tokens=150).allowed

    quota.set_limit("user:x", "tokens", "day", 50, shadow=True)

    assert not quota.consume("user:x", tokens=1_000).allowed  # the default still enforces
    assert not quota.consume("user:x", tokens=150).allowed
    admitted = quota.consume("user:x", tokens=60)  # fits 100, not 50
    assert admitted.allowed
    assert [(s.source, s.shadow) for s in admitted.shadow_blocked] == [("override", True)]
    assert [(s.source, s.limit) for s in admitted.blocked_by] == []
    assert not quota.consume("user:x", tokens=41).allowed  # 60 + 41 > 100
    assert _effective(quota, "user:x") == [
        ("tokens", "day", 100, "default", False),
        ("tokens", "day", 50, "override", True),
    ]
    # 1,000, 150 (twice: once before the trial existed, not counted), 60 and 41 went over 50.
    assert quota.shadow_hits("user:x") == {"tokens/day": 4}
    (enforced, trial) = quota.usage("user:x").limits
    assert (enforced.source, enforced.used, enforced.remaining) == ("default", 60, 40)
    assert (trial.source, trial.shadow, trial.used, trial.remaining) == ("override", True, 60, 0)


def test_a_looser_shadow_override_never_loosens_the_plan(quota: Quota) -> None:
    plan = quota.create_plan("small", [{"metric": "requests", "window": "minute", "limit": 2}])
    quota.assign_plan("user:p", plan.id)
    quota.set_limit("user:p", "requests", "minute", 1_000, shadow=True)

    assert quota.consume("user:p", requests=2).allowed
    denied = quota.consume("user:p", requests=1)

    assert not denied.allowed
    assert [(b.source, b.limit) for b in denied.blocked_by] == [("plan", 2)]
    assert quota.shadow_hits("user:p") == {}


def test_a_shadow_plan_rule_sits_beside_the_default(quota: Quota) -> None:
    quota.set_default("company", "tokens", "month", 1_000)
    plan = quota.create_plan(
        "trial", [{"metric": "tokens", "window": "month", "limit": 10, "shadow": True}]
    )
    quota.assign_plan("company:c", plan.id)

    assert quota.consume("company:c", tokens=500).allowed  # over the trial, within the default
    assert not quota.consume("company:c", tokens=501).allowed

    assert _effective(quota, "company:c") == [
        ("tokens", "month", 1_000, "default", False),
        ("tokens", "month", 10, "plan", True),
    ]
    assert quota.shadow_hits("company:c") == {"tokens/month": 2}


def test_the_nearest_shadow_rule_is_the_one_on_trial(quota: Quota) -> None:
    """One trial per (metric, window): a shadow override replaces a shadow default."""
    quota.set_default("user", "tokens", "day", 5, shadow=True)
    quota.set_limit("user:n", "tokens", "day", 100, shadow=True)
    quota.set_limit("user:n", "tokens", "hour", 1_000)

    assert quota.consume("user:n", tokens=50).allowed  # over the default trial only

    assert ("tokens", "day", 5, "default", True) not in _effective(quota, "user:n")
    assert quota.shadow_hits("user:n") == {}
    assert quota.consume("user:n", tokens=60).allowed
    assert quota.shadow_hits("user:n") == {"tokens/day": 1}


def test_a_window_with_only_a_shadow_rule_reports_source_none(quota: Quota) -> None:
    quota.set_limit("user:s", "credits", "month", "2.5", shadow=True)
    quota.set_limit("user:s", "tokens", "day", 10)

    assert quota.consume("user:s", credits="4", tokens=1).allowed

    assert _effective(quota, "user:s") == [
        ("credits", "month", -1, "none", False),
        ("credits", "month", "2.5", "override", True),
        ("tokens", "day", 10, "override", False),
    ]
    statuses = quota.usage("user:s").limits
    assert [(s.metric, s.source, s.shadow, s.limit, s.remaining) for s in statuses] == [
        ("credits", "none", False, -1, None),
        ("credits", "override", True, statuses[1].limit, 0),
        ("tokens", "override", False, 10, 9),
    ]
    assert str(statuses[1].limit) == "2.5"
    assert statuses[0].used == statuses[1].used == 4
    assert quota.shadow_hits("user:s") == {"credits/month": 1}


def test_an_ancestors_shadow_rule_does_not_loosen_its_enforced_limit(quota: Quota) -> None:
    quota.put_subject("user:m", parents=["company:acme"])
    quota.set_default("company", "requests", "day", 3)
    quota.set_limit("company:acme", "requests", "day", 100, shadow=True)

    for _ in range(3):
        assert quota.consume("user:m", requests=1).allowed
    denied = quota.consume("user:m", requests=1)

    assert not denied.allowed
    assert [(b.subject, b.source) for b in denied.blocked_by] == [("company:acme", "default")]

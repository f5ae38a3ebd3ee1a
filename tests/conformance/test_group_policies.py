"""A resource policy on a group reaches its members (contract §6), on every backend."""

from __future__ import annotations

from tokenquota import Quota

RESOURCE = "deployment:llm"


def _rule(limit: int) -> dict[str, object]:
    return {"metric": "requests", "window": "minute", "limit": limit}


def test_a_member_is_held_to_its_nearest_groups_policy(quota: Quota) -> None:
    quota.put_subject("usergroup:team", parents=["usergroup:org"])
    quota.put_subject("user:ann", parents=["usergroup:team"])
    quota.put_subject("user:own", parents=["usergroup:team"])
    quota.set_resource_quota(
        RESOURCE,
        {
            "default_rules": [_rule(100)],
            "policies": [
                {"consumer": "usergroup:org", "rules": [_rule(4)]},
                {"consumer": "usergroup:team", "rules": [_rule(2)]},
                {"consumer": "user:own", "rules": [_rule(3)]},
            ],
        },
    )

    def admitted(subject: str) -> int:
        return sum(quota.consume(subject, resource=RESOURCE).allowed for _ in range(6))

    assert admitted("user:ann") == 2  # team's policy, nearer than org's
    assert admitted("user:own") == 3  # its own policy wins over its group's
    assert admitted("user:out") == 6  # no group: the default rules
    denied = quota.consume("user:ann", resource=RESOURCE)
    assert [(b.source, b.limit) for b in denied.blocked_by] == [("resource", 2)]


def test_a_groups_reserved_share_is_its_members_to_use(quota: Quota) -> None:
    quota.put_subject("user:ann", parents=["usergroup:team"])
    quota.set_resource_quota(
        RESOURCE,
        {
            "policies": [{"consumer": "usergroup:team", "rules": [], "reserved": "0.5"}],
            "capacity": {"value": 4, "units": "requests"},
            "saturation_threshold": "0",
        },
    )

    assert [quota.consume("user:bob", resource=RESOURCE).allowed for _ in range(3)] == [
        True,
        True,
        False,  # the other half is kept for the team
    ]
    assert [quota.consume("user:ann", resource=RESOURCE).allowed for _ in range(3)] == [
        True,
        True,
        False,  # capacity used up
    ]

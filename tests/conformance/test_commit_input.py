"""A repeated commit validates its amounts before it replays, on every backend."""

from __future__ import annotations

import pytest

from tokenquota import Quota, ValidationError


@pytest.mark.parametrize(
    ("amounts", "field"),
    [({"tokens": -5}, "amounts.tokens"), ({"no such metric!": 1}, "amounts")],
)
def test_a_repeated_commit_refuses_bad_amounts(
    quota: Quota, amounts: dict[str, object], field: str
) -> None:
    held = quota.reserve("user:alice", tokens=300)
    assert held.reservation is not None
    first = quota.commit(held.reservation.id, tokens=250)
    with pytest.raises(ValidationError) as refused:
        quota.commit(held.reservation.id, amounts)
    assert refused.value.details["field"].startswith(field)
    # Refused, and nothing changed: a good repeat still answers the first commit.
    again = quota.commit(held.reservation.id)
    assert again.replayed
    assert again.event_id == first.event_id
    assert quota.events(subject="user:alice").total == 1

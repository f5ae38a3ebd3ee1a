"""A commit is stored as a commit event naming its reservation, and counts as usage.

Before, a commit was a plain consume event: nothing in the ledger said
which reservation it settled (issue 11, item 10).
"""

from __future__ import annotations

from tokenquota import Quota
from tokenquota.wire.ledger import encode_event


def test_a_commit_is_a_commit_event_naming_its_reservation(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100)
    held = quota.reserve("user:ann", tokens=30).reservation
    assert held is not None
    committed = quota.commit(held.id, tokens=20)
    quota.consume("user:ann", tokens=5)

    events = {e.id: e for e in quota.events(subject="user:ann").items}

    assert committed.event_id is not None
    commit = events[committed.event_id]
    assert commit.kind == "commit"
    assert commit.reservation_id == held.id
    assert encode_event(commit)["tags"]["reservation"] == held.id
    assert sorted(e.kind for e in events.values()) == ["commit", "consume"]


def test_commit_events_count_as_usage_in_history_rebuild_and_backfill(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100)
    held = quota.reserve("user:ann", tokens=30).reservation
    assert held is not None
    quota.commit(held.id, tokens=20)
    quota.consume("user:ann", tokens=5)

    assert {p.metric: p.value for p in quota.history("user:ann")} == {"requests": 2, "tokens": 25}
    quota.rebuild()
    assert {s.window: s.used for s in quota.usage("user:ann").limits} == {"day": 25}
    # A limit set now is backfilled from the ledger: the commit is in it.
    quota.set_limit("user:ann", "tokens", "month", 1_000)
    assert {s.window: s.used for s in quota.usage("user:ann").limits} == {"day": 25, "month": 25}

"""``Quota.commit_usage``: a commit that records the model and tags on its ledger event,
on every backend (the gateway stores the price it charged there)."""

from __future__ import annotations

import pytest

from tokenquota import Quota
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.ledger import RESERVATION_TAG


def test_the_model_and_tags_reach_the_ledger(quota: Quota) -> None:
    reserved = quota.reserve("user:alice", {"tokens": 100, "credits": "0.5"}, ttl=60)
    assert reserved.reservation is not None
    decision = quota.commit_usage(
        reserved.reservation.id,
        {"input_tokens": 20, "output_tokens": 7, "credits": "0.000123"},
        model="gpt-4o",
        tags={"price.version": "v2", "gateway.upstream": "local"},
    )
    assert decision.allowed
    (event,) = [e for e in quota.iter_events(subject="user:alice") if e.is_usage]
    assert event.kind == "commit"
    assert event.model == "gpt-4o"
    assert event.tags == {
        "price.version": "v2",
        "gateway.upstream": "local",
        RESERVATION_TAG: reserved.reservation.id,
    }
    # A repeat answers the first commit and records nothing more.
    again = quota.commit_usage(reserved.reservation.id, {"input_tokens": 1}, model="other")
    assert again.replayed
    assert len([e for e in quota.iter_events(subject="user:alice") if e.is_usage]) == 1


def test_bad_model_or_tags_are_refused_before_anything(quota: Quota) -> None:
    reserved = quota.reserve("user:alice", {"tokens": 10}, ttl=60)
    assert reserved.reservation is not None
    with pytest.raises(ValidationError, match="model"):
        quota.commit_usage(reserved.reservation.id, {"tokens": 1}, model="\x00")
    with pytest.raises(ValidationError, match="tags"):
        quota.commit_usage(reserved.reservation.id, {"tokens": 1}, tags={"a": "\x07"})
    assert quota.get_reservation(reserved.reservation.id).committed is None

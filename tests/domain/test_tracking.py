"""The tracked pairs per kind of series (domain/tracking.py)."""

from __future__ import annotations

from tokenquota.domain.bounds import LIFETIME
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.subjects import SubjectRef, consumer_series
from tokenquota.domain.tracking import WILDCARD, Added, Tracking, series_kind

DAY = LimitKey.from_storage("tokens", "day")
HOUR = LimitKey.from_storage("tokens", "hour")
CAP = LimitKey.from_storage("concurrent_requests", "")


def test_a_series_is_of_the_kind_before_its_first_colon() -> None:
    assert series_kind("user:alice") == "user"
    share = consumer_series(SubjectRef.parse("gpu:pool"), SubjectRef.parse("user:bob"))
    assert series_kind(share) == "gpu"  # a share counts as its resource's kind


def test_a_series_counts_its_kinds_pairs_and_the_wildcards() -> None:
    tracking = Tracking({"user": [DAY, CAP], WILDCARD: [HOUR]})
    assert tracking.of_series("user:a") == LIFETIME | {DAY, HOUR}  # no windowless pair
    assert tracking.of_series("org:o") == LIFETIME | {HOUR}
    assert Tracking().of_series("user:a") == LIFETIME
    assert tracking.of_series("user:b") is tracking.of_series("user:a")  # kept per kind
    assert tracking.pairs() == LIFETIME | {DAY, HOUR}


def test_adding_names_only_what_is_new_to_the_kind() -> None:
    tracking = Tracking({WILDCARD: [HOUR]})
    same, new = tracking.adding("user", [HOUR])
    assert same is tracking  # the wildcard counts it for users already
    assert not new
    user, new = tracking.adding("user", [DAY, HOUR])
    assert new == {DAY}
    assert user.kinds["user"] == {DAY}
    every, new = user.adding(WILDCARD, [DAY])
    assert new == {DAY}  # new to the wildcard: the kinds that did not count it
    assert DAY in every.of_series("org:o")


def test_a_backfill_replays_only_into_the_series_that_did_not_count_the_pair() -> None:
    before = Tracking({"user": [DAY]})
    after, _ = before.adding(WILDCARD, [DAY, HOUR])
    added = Added(before, after, [DAY])
    assert added.of_series("user:a") == frozenset()  # counted already: never twice
    assert added.of_series("org:o") == {DAY}
    assert Added(before, after, [DAY, HOUR]).of_series("user:a") == {HOUR}
    kind, _ = before.adding("org", [HOUR])
    assert Added(before, kind, [HOUR]).of_series("user:a") == frozenset()
    assert Added(before, kind, [HOUR]).of_series("org:o") == {HOUR}


def test_rows_round_trip() -> None:
    tracking = Tracking({"user": [DAY], WILDCARD: [HOUR]})
    rows = [(kind, key.metric.value, key.window_key) for kind, key in tracking.rows()]
    assert Tracking.from_rows(rows).same(tracking)

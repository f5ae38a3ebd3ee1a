"""Bad input: a clear error naming the field, and nothing written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tokenquota import CycleError, Quota, TokenQuotaError, ValidationError
from tokenquota.wire.catalog import encode_plan


def snapshot(quota: Quota) -> tuple[Any, ...]:
    return (
        quota.events().total,
        quota.audit().total,
        quota.list_subjects().total,
        quota.usage("user:alice").limits,
        [encode_plan(p) for p in quota.plans()],
        [(d.kind, d.rule) for d in quota.defaults()],
    )


@pytest.fixture
def seeded(quota: Quota) -> Quota:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.consume("user:alice", tokens=10)
    return quota


BIG = 2**63


CASES: list[tuple[str, Callable[[Quota], object], str]] = [
    ("negative tokens", lambda q: q.consume("user:alice", tokens=-1), "amounts.tokens"),
    ("oversized tokens", lambda q: q.consume("user:alice", tokens=BIG), "amounts.tokens"),
    ("fractional tokens", lambda q: q.consume("user:alice", tokens=1.5), "amounts.tokens"),
    ("boolean amount", lambda q: q.consume("user:alice", requests=True), "amounts.requests"),
    ("text amount", lambda q: q.consume("user:alice", tokens="lots"), "amounts.tokens"),
    ("credit places", lambda q: q.consume("user:alice", credits="0.0000000001"), "amounts.credits"),
    ("unknown metric", lambda q: q.consume("user:alice", {"tokenz": 1}), "amounts.tokenz"),
    (
        "leased metric",
        lambda q: q.consume("user:alice", concurrent_requests=1),
        "amounts.concurrent_requests",
    ),
    ("malformed ref", lambda q: q.consume("alice", tokens=1), "subject"),
    ("bad kind", lambda q: q.consume("User:alice", tokens=1), "subject"),
    ("bad id", lambda q: q.consume("user:al ice", tokens=1), "subject"),
    ("long id", lambda q: q.consume("user:" + "a" * 129, tokens=1), "subject"),
    ("bad mode", lambda q: q.consume("user:alice", tokens=1, mode="maybe"), "mode"),
    (
        "naive time",
        lambda q: q.consume("user:alice", tokens=1, timestamp=datetime(2026, 1, 1)),  # noqa: DTZ001
        "timestamp",
    ),
    (
        "future time",
        lambda q: q.consume("user:alice", tokens=1, timestamp=q.clock.now() + timedelta(hours=1)),
        "timestamp",
    ),
    (
        "beyond retention",
        lambda q: q.consume("user:alice", tokens=1, timestamp=q.clock.now() - timedelta(days=401)),
        "timestamp",
    ),
    (
        "long key",
        lambda q: q.consume("user:alice", tokens=1, idempotency_key="k" * 256),
        "idempotency_key",
    ),
    ("long model", lambda q: q.consume("user:alice", tokens=1, model="m" * 129), "model"),
    (
        "tag value",
        lambda q: q.consume("user:alice", tokens=1, tags={"a": 1}),  # type: ignore[dict-item]
        "tags.a",
    ),
    (
        "too many tags",
        lambda q: q.consume("user:alice", tokens=1, tags={str(i): "" for i in range(33)}),
        "tags",
    ),
    (
        "unknown window",
        lambda q: q.set_limit("user:alice", "tokens", "fortnight", 5),
        "limits[0].window",
    ),
    (
        "rolling unit",
        lambda q: q.set_limit("user:alice", "tokens", "rolling:2w", 5),
        "limits[0].window",
    ),
    (
        "rolling zero",
        lambda q: q.set_limit("user:alice", "tokens", "rolling:0d", 5),
        "limits[0].window",
    ),
    ("missing window", lambda q: q.set_limit("user:alice", "tokens", None, 5), "limits[0].window"),
    (
        "window on a cap",
        lambda q: q.set_limit("user:alice", "input_sequence_length", "day", 5),
        "limits[0].window",
    ),
    (
        "unknown limit metric",
        lambda q: q.set_limit("user:alice", "cookies", "day", 5),
        "limits[0].metric",
    ),
    ("negative limit", lambda q: q.set_limit("user:alice", "tokens", "day", -2), "limits[0].limit"),
    (
        "oversized limit",
        lambda q: q.set_limit("user:alice", "tokens", "day", BIG),
        "limits[0].limit",
    ),
    (
        "second item bad",
        lambda q: q.set_limits(
            "user:alice",
            [
                {"metric": "tokens", "window": "day", "limit": 1},
                {"metric": "tokens", "window": "day", "limit": "x"},
            ],
        ),
        "limits[1]",
    ),
    ("default kind", lambda q: q.set_default("Users", "tokens", "day", 5), "defaults[0].kind"),
    (
        "metadata size",
        lambda q: q.put_subject("user:alice", metadata={"x": "y" * 17_000}),
        "metadata",
    ),
    ("metadata type", lambda q: q.put_subject("user:alice", metadata=["x"]), "metadata"),  # type: ignore[arg-type]
    ("long name", lambda q: q.put_subject("user:alice", name="n" * 257), "name"),
    ("bad parent", lambda q: q.set_parents("user:alice", ["acme"]), "parents[0]"),
    (
        "too many parents",
        lambda q: q.set_parents("user:alice", [f"group:g{i}" for i in range(17)]),
        "parents",
    ),
    ("plan name", lambda q: q.create_plan("", []), "name"),
    (
        "plan rule",
        lambda q: q.create_plan("Gold", [{"metric": "tokens", "window": "day"}]),
        "rules[0].limit",
    ),
    (
        "year one",
        lambda q: q.events(start=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))),
        "start",
    ),
    (
        "year 9999",
        lambda q: q.history("user:alice", end=datetime(9999, 12, 31, 23, tzinfo=UTC)),
        "end",
    ),
    ("page size", lambda q: q.events(limit=5_000), "limit"),
    ("page offset", lambda q: q.events(offset=-1), "offset"),
    ("granularity", lambda q: q.history("user:alice", granularity="week"), "granularity"),
    ("group by", lambda q: q.history("user:alice", group_by="colour"), "group_by"),
    (
        "history range",
        lambda q: q.history(
            "user:alice", start=q.clock.now() - timedelta(days=3_000), granularity="hour"
        ),
        "start",
    ),
]


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_field_and_changes_nothing(
    seeded: Quota, call: Callable[[Quota], object], field: str
) -> None:
    before = snapshot(seeded)
    with pytest.raises(ValidationError) as caught:
        call(seeded)
    assert caught.value.field == field
    assert caught.value.status == 422
    assert field in str(caught.value)
    assert snapshot(seeded) == before


def test_a_cycle_is_a_conflict_and_changes_nothing(seeded: Quota) -> None:
    before = snapshot(seeded)
    with pytest.raises(CycleError) as caught:
        seeded.set_parents("company:acme", ["user:alice"])
    assert caught.value.status == 409
    assert snapshot(seeded) == before


def test_every_error_is_a_tokenquota_error_with_a_code(seeded: Quota) -> None:
    with pytest.raises(TokenQuotaError) as caught:
        seeded.get_plan("nope")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)

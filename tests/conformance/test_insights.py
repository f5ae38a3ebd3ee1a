"""Top consumers (engine/insights.py) the same on every backend, and the same as the
ledger walk the memory store uses (storage/memory/insights.py), the reference."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from tests.conftest import START
from tokenquota import FrozenClock, Quota
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine.insights import Insights
from tokenquota.storage.memory.insights import LedgerInsights


def _ranked(quota: Quota, metric: str = "tokens", **kwargs: object) -> list[tuple[str, object]]:
    top = Insights(quota.store, quota.clock).top_consumers(metric, **kwargs)  # type: ignore[arg-type]
    return [(c.subject, c.value) for c in top.consumers]


@pytest.fixture
def acme(quota: Quota) -> Quota:
    """org:acme > team:a > user:a1, org:acme > user:a2, org:other > user:o1, with usage."""
    quota.put_subject("org:acme")
    quota.put_subject("org:other")
    quota.put_subject("team:a", parents=["org:acme"])
    quota.put_subject("user:a1", parents=["team:a"])
    quota.put_subject("user:a2", parents=["org:acme"])
    quota.put_subject("user:o1", parents=["org:other"])
    quota.consume("user:a1", tokens=30, model="gpt-x")
    quota.consume("user:a1", tokens=10, requests=1)
    quota.consume("user:a2", tokens=25)
    quota.consume("user:o1", tokens=100)
    # Last month: outside the current month, inside an explicit range.
    quota.consume("user:a2", tokens=1_000, mode="record", timestamp=START - timedelta(days=20))
    quota.grant("user:a1", 50)  # credits granted are not usage
    return quota


def test_everyone_ranked_in_the_current_month(acme: Quota) -> None:
    assert _ranked(acme) == [
        ("org:other", 100),
        ("user:o1", 100),
        ("org:acme", 65),
        ("team:a", 40),
        ("user:a1", 40),
        ("user:a2", 25),
    ]
    top = Insights(acme.store, acme.clock).top_consumers("tokens", limit=2)
    assert [c.events for c in top.consumers] == [1, 1]
    assert (top.window, top.start, top.end) == (
        "month",
        START.replace(day=1, hour=0),
        START.replace(month=4, day=1, hour=0),
    )


def test_the_children_of_a_parent_by_what_they_spent_in_it(acme: Quota) -> None:
    assert _ranked(acme, parent="org:acme") == [("team:a", 40), ("user:a2", 25)]
    assert _ranked(acme, parent="team:a") == [("user:a1", 40)]
    assert _ranked(acme, parent="user:a1") == []
    # Moved: its earlier usage was not charged to org:other, nor is it a child of acme now.
    acme.put_subject("user:a2", parents=["org:other"])
    assert _ranked(acme, parent="org:acme") == [("team:a", 40)]
    assert _ranked(acme, parent="org:other") == [("user:o1", 100)]
    acme.consume("user:a2", tokens=7)
    assert _ranked(acme, parent="org:other") == [("user:o1", 100), ("user:a2", 7)]


def test_kind_within_and_ranges(acme: Quota) -> None:
    assert _ranked(acme, kind="user") == [("user:o1", 100), ("user:a1", 40), ("user:a2", 25)]
    assert _ranked(acme, kind="user", within="org:acme") == [("user:a1", 40), ("user:a2", 25)]
    assert _ranked(acme, within="team:a") == [("team:a", 40), ("user:a1", 40)]
    assert _ranked(acme, within="org:acme")[0] == ("org:acme", 65)
    # Every consume counts one request unless it says otherwise.
    assert _ranked(acme, "requests", kind="user") == [
        ("user:a1", 2),
        ("user:a2", 1),
        ("user:o1", 1),
    ]
    assert _ranked(acme, "credits") == []
    last_month = START - timedelta(days=30)
    assert _ranked(acme, kind="user", start=last_month) == [
        ("user:a2", 1_025),
        ("user:o1", 100),
        ("user:a1", 40),
    ]
    assert _ranked(acme, kind="user", start=last_month, end=START - timedelta(days=1)) == [
        ("user:a2", 1_000)
    ]
    assert _ranked(acme, kind="user", window="total")[0] == ("user:a2", 1_025)
    assert _ranked(acme, kind="user", window="day") == _ranked(acme, kind="user")


def test_a_rolling_window_counts_what_its_limit_would(quota: Quota, clock: FrozenClock) -> None:
    quota.consume("user:r", tokens=5)
    clock.advance(timedelta(hours=2))
    quota.consume("user:r", tokens=3)
    assert _ranked(quota, window="rolling:1h") == [("user:r", 3)]
    assert _ranked(quota, window="rolling:3h") == [("user:r", 8)]


def test_credits_are_decimals(quota: Quota) -> None:
    quota.consume("user:c", credits="1.25")
    quota.consume("user:c", credits="0.5")
    assert _ranked(quota, "credits") == [("user:c", Decimal("1.75"))]


def test_the_backend_agrees_with_the_ledger_walk(acme: Quota) -> None:
    reference = LedgerInsights(acme.store)
    acme_ref = SubjectRef("org", "acme")
    for parent in (None, acme_ref):
        for within in (None, acme_ref):
            for kind in (None, "user"):
                mine = Insights(acme.store, acme.clock).top_consumers(
                    "tokens", window="total", parent=parent, within=within, kind=kind, limit=100
                )
                expected = reference.top_consumers(
                    Metric.TOKENS,
                    start=None,
                    end=None,
                    parent=parent,
                    within=within,
                    hidden=frozenset(acme.ancestors(within)) if within else frozenset(),
                    kind=kind,
                    limit=100,
                )
                assert [(c.subject, c.value, c.events) for c in mine.consumers] == [
                    (str(s.subject), s.units, s.events) for s in expected
                ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metric": "concurrent_requests"}, "metric"),
        ({"metric": "nope"}, "metric"),
        ({"metric": "tokens", "limit": 0}, "limit"),
        ({"metric": "tokens", "limit": 101}, "limit"),
        ({"metric": "tokens", "window": "fortnight"}, "window"),
        ({"metric": "tokens", "window": "day", "start": START}, "window"),
        ({"metric": "tokens", "start": START, "end": START}, "start"),
        ({"metric": "tokens", "parent": "acme"}, "parent"),
        ({"metric": "tokens", "kind": "Bad kind"}, "kind"),
    ],
)
def test_bad_input_names_its_field(quota: Quota, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Insights(quota.store, quota.clock).top_consumers(**kwargs)  # type: ignore[arg-type]
    assert raised.value.details.get("field") == field


def test_the_library_method_ranks_as_the_insights_do(acme: Quota) -> None:
    """``Quota.top_consumers`` is the clients' method in the library, on every backend."""
    for kwargs in ({}, {"parent": "org:acme"}, {"kind": "user", "limit": 2}, {"window": "day"}):
        mine = acme.top_consumers("tokens", **kwargs)
        assert mine == Insights(acme.store, acme.clock).top_consumers("tokens", **kwargs)
    assert [c.subject for c in acme.top_consumers("tokens", parent="org:acme").consumers] == [
        "team:a",
        "user:a2",
    ]

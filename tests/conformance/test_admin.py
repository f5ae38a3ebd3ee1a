"""Subjects, limits, defaults, plans, audit, ledger, rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import QuotaFactory
from tokenquota import Conflict, CycleError, FrozenClock, NotFound, Quota, ValidationError
from tokenquota.wire.metrics import encode_amounts


def test_subject_upsert_keeps_what_is_not_given(quota: Quota) -> None:
    quota.put_subject(
        "user:alice", name="Alice", metadata={"tier": "pro"}, parents=["company:acme"]
    )
    quota.put_subject("user:alice", name="Alice B.")
    subject = quota.get_subject("user:alice")
    assert (subject.name, dict(subject.metadata), [str(p) for p in subject.parents]) == (
        "Alice B.",
        {"tier": "pro"},
        ["company:acme"],
    )
    assert quota.get_subject("company:acme").parents == ()  # parents are created too


def test_list_subjects_filters_and_pages(quota: Quota) -> None:
    for i in range(5):
        quota.put_subject(f"user:u{i}", parents=["company:acme"] if i % 2 == 0 else [])
    page = quota.list_subjects(kind="user", offset=1, limit=2)
    assert ([str(s.ref) for s in page.items], page.total) == (["user:u1", "user:u2"], 5)
    children = quota.list_subjects(parent="company:acme")
    assert [str(s.ref) for s in children.items] == ["user:u0", "user:u2", "user:u4"]


def test_a_parent_cycle_is_refused_and_nothing_changes(quota: Quota) -> None:
    quota.set_parents("user:alice", ["team:a"])
    quota.set_parents("team:a", ["company:acme"])
    with pytest.raises(CycleError):
        quota.set_parents("company:acme", ["user:alice"])
    with pytest.raises(CycleError):
        quota.set_parents("team:a", ["team:a"])
    assert quota.get_subject("company:acme").parents == ()
    assert [str(p) for p in quota.get_subject("team:a").parents] == ["company:acme"]


def test_delete_subject(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    with pytest.raises(Conflict):
        quota.delete_subject("company:acme")
    quota.delete_subject("user:alice")
    with pytest.raises(NotFound):
        quota.get_subject("user:alice")
    with pytest.raises(NotFound):
        quota.delete_subject("user:alice")


def test_resolution_falls_through_override_plan_default(quota: Quota) -> None:
    quota.set_default("user", "tokens", "day", 10)
    plan = quota.create_plan("Gold", [{"metric": "tokens", "window": "day", "limit": 20}])
    quota.assign_plan("user:alice", "Gold")
    quota.set_limit("user:alice", "tokens", "day", 30)

    def effective() -> tuple[object, str]:
        (limit,) = quota.limits("user:alice").effective
        return limit.value, limit.source.value

    assert effective() == (30, "override")
    quota.set_limit("user:alice", "tokens", "day", None)
    assert effective() == (20, "plan")
    quota.assign_plan("user:alice", None)
    assert effective() == (10, "default")
    quota.set_default("user", "tokens", "day", None)
    assert quota.limits("user:alice").effective == ()
    assert quota.get_plan(plan.id).name == "Gold"


def test_changing_a_plan_changes_every_subject_on_it(quota: Quota) -> None:
    quota.create_plan("Free", [{"metric": "requests", "window": "minute", "limit": 2}])
    for user in ("user:a", "user:b"):
        quota.assign_plan(user, "Free")
        quota.consume(user)
        quota.consume(user)
        assert not quota.consume(user).allowed
    quota.update_plan("Free", rules=[{"metric": "requests", "window": "minute", "limit": 5}])
    assert quota.consume("user:a").allowed
    assert quota.consume("user:b").allowed
    with pytest.raises(Conflict):
        quota.delete_plan("Free")
    with pytest.raises(Conflict):
        quota.create_plan("Free", [])


def test_changing_a_limit_never_resets_usage(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 100)
    quota.consume("user:alice", tokens=80)
    quota.set_limit("user:alice", "tokens", "day", 90)
    assert quota.usage("user:alice").limits[0].used == 80
    assert not quota.consume("user:alice", tokens=20).allowed


def test_a_limit_on_a_new_window_sees_usage_already_in_the_ledger(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.consume("user:alice", tokens=300)
    clock.advance(hours=2)
    quota.consume("user:alice", tokens=200)
    quota.set_limit("user:alice", "tokens", "rolling:1h", 1_000)
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    by_window = {s.window: s.used for s in quota.usage("user:alice").limits}
    assert by_window == {"rolling:1h": 200, "day": 500}


def test_config_defaults_apply_until_a_runtime_default_replaces_them(
    make_quota: QuotaFactory,
) -> None:
    quota = make_quota(
        defaults=[{"kind": "user", "metric": "tokens", "window": "day", "limit": 100}]
    )
    assert [(d.kind, d.origin) for d in quota.defaults()] == [("user", "config")]
    quota.set_default("user", "tokens", "day", 500)
    assert [(d.rule.value, d.origin) for d in quota.defaults()] == [(500, "runtime")]
    assert quota.consume("user:alice", tokens=400).allowed
    quota.set_default("user", "tokens", "day", None)
    assert not quota.consume("user:alice", tokens=1).allowed  # the file's 100 is back


def test_audit_log_keeps_who_when_before_and_after(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:alice", "tokens", "day", 100, actor="ops@acme")
    clock.advance(minutes=1)
    quota.set_limit("user:alice", "tokens", "day", 200, actor="ops@acme")
    quota.set_default("user", "requests", "minute", 5)
    plan = quota.create_plan("Gold", [])
    quota.assign_plan("user:alice", plan.id)

    entries = quota.audit(subject="user:alice").items
    assert [(e.action, e.actor) for e in entries] == [
        ("override.set", "ops@acme"),
        ("override.set", "ops@acme"),
        ("plan.assign", "library"),
    ]
    assert entries[1].before["limit"] == 100
    assert entries[1].after["limit"] == 200
    assert entries[1].at == clock.now()
    assert [e.action for e in quota.audit(subject="defaults/user").items] == ["default.set"]
    assert quota.audit().total == 5


def test_events_are_paginated_and_filtered(quota: Quota, clock: FrozenClock) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    for i in range(5):
        quota.consume("user:alice", tokens=i + 1, model="gpt", tags={"feature": "chat"})
        clock.advance(minutes=10)
    quota.consume("user:bob", tokens=100)
    page = quota.events(subject="company:acme", offset=1, limit=2)
    assert page.total == 5
    assert [encode_amounts(e.amounts)["tokens"] for e in page.items] == [2, 3]
    assert page.items[0].charged[1].kind == "company"
    window = quota.events(start=datetime(2026, 3, 10, 12, 15, tzinfo=UTC), end=clock.now())
    assert window.total == 3
    assert len(list(quota.iter_events(subject="user:alice"))) == 5


def test_history_groups_by_period_and_model(quota: Quota, clock: FrozenClock) -> None:
    quota.consume("user:alice", tokens=10, model="gpt")
    quota.consume("user:alice", tokens=5, model="llama")
    clock.advance(days=1)
    quota.consume("user:alice", tokens=7, model="gpt")
    start = clock.now() - timedelta(days=2)

    by_metric = quota.history("user:alice", start=start, granularity="day")
    assert [(p.start.day, p.metric, p.value) for p in by_metric] == [
        (10, "requests", 2),
        (10, "tokens", 15),
        (11, "requests", 1),
        (11, "tokens", 7),
    ]
    by_model = quota.history("user:alice", start=start, granularity="month", group_by="model")
    assert [(p.model, p.metric, p.value) for p in by_model] == [
        ("gpt", "requests", 2),
        ("llama", "requests", 1),
        ("gpt", "tokens", 17),
        ("llama", "tokens", 5),
    ]


def test_rebuild_reproduces_the_counters(quota: Quota, clock: FrozenClock) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "rolling:1d", 10_000)
    quota.set_limit("user:alice", "tokens", "day", 5_000)
    quota.set_limit("user:alice", "credits", "month", 50)
    for i in range(20):
        quota.consume("user:alice", tokens=100 + i, credits="0.25")
        clock.advance(minutes=37)
    before = quota.usage("user:alice", include_ancestors=True)
    assert quota.rebuild() == 20
    assert quota.usage("user:alice", include_ancestors=True) == before


def test_rebuild_reports_its_progress_and_still_agrees(quota: Quota, clock: FrozenClock) -> None:
    """``on_progress`` sees the replay move forward to the ledger's size, on every backend."""
    from tokenquota.storage.base import PROGRESS_EVERY

    quota.set_limit("user:alice", "tokens", "total", 10_000_000)
    n = PROGRESS_EVERY + 5  # more than one report's worth of events
    for _ in range(n):
        quota.consume("user:alice", tokens=3, mode="record")
    quota.grant("user:alice", 2)  # a grant is a ledger event too
    before = quota.usage("user:alice")
    seen: list[tuple[int, int]] = []
    assert quota.rebuild(on_progress=lambda done, total: seen.append((done, total))) == n + 1
    assert quota.usage("user:alice") == before
    assert seen[0] == (0, n + 1)
    assert seen[-1] == (n + 1, n + 1)
    assert len(seen) >= 3  # the start, at least one step between, the end
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_the_time_zone_is_kept_with_the_store(
    backend: str, make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    if backend == "memory":
        pytest.skip("memory:// lives for one process; there is nothing to reopen")
    clock.set(datetime(2026, 3, 10, 23, 30, tzinfo=UTC))  # 00:30 on the 11th in Stockholm
    quota = make_quota(timezone="Europe/Stockholm")
    quota.set_limit("user:alice", "tokens", "day", 100)
    clock.set(datetime(2026, 3, 10, 22, 30, tzinfo=UTC))  # 23:30 on the 10th in Stockholm
    quota.consume("user:alice", tokens=40)
    clock.set(datetime(2026, 3, 10, 23, 30, tzinfo=UTC))
    quota.consume("user:alice", tokens=10)
    quota.close()

    reopened = make_quota()  # no zone given: the store's own
    assert reopened.tz.key == "Europe/Stockholm"
    assert reopened.usage("user:alice").limits[0].used == 10
    with pytest.raises(ValidationError) as caught:
        make_quota(timezone="UTC")
    assert caught.value.field == "timezone"

    moved = make_quota(timezone="UTC", move_timezone=True)
    assert moved.usage("user:alice").limits[0].used == 50  # both fall on the 10th in UTC
    assert make_quota().tz.key == "UTC"


def test_subject_changes_are_audited(quota: Quota) -> None:
    quota.put_subject("user:alice", name="Alice", actor="ops")
    quota.set_parents("user:alice", ["company:acme"], actor="ops")
    quota.put_subject("user:alice", name="Alice")  # no change, no entry
    entries = [e for e in quota.audit(subject="user:alice").items if e.action == "subject.put"]
    assert [(e.actor, e.before is None) for e in entries] == [("ops", True), ("ops", False)]
    assert entries[1].before["parents"] == []
    assert entries[1].after["parents"] == ["company:acme"]


def test_audit_targets_never_collide_with_subject_refs(quota: Quota) -> None:
    quota.set_limit("kind:user", "tokens", "day", 1)  # "kind" is a valid subject kind
    quota.set_default("user", "tokens", "day", 2)
    assert [e.target for e in quota.audit(subject="kind:user").items] == ["kind:user"]
    assert [e.target for e in quota.audit(subject="defaults/user").items] == ["defaults/user"]


def test_strict_subjects_apply_to_every_read_and_to_parents(make_quota: QuotaFactory) -> None:
    quota = make_quota(strict_subjects=True)
    for call in (
        lambda: quota.limits("user:ghost"),
        lambda: quota.history("user:ghost"),
        lambda: quota.put_subject("user:alice", parents=["company:ghost"]),
    ):
        with pytest.raises(NotFound):
            call()
    assert quota.list_subjects().total == 0

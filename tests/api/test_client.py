"""tokenquota.Client and AsyncClient against a real server: no mocks.

Where the engine the server runs on can answer the same question, the test
compares the client's answer with the engine's: the client must hand back
exactly what the embedded library would.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import (
    AsyncClient,
    Client,
    Conflict,
    CycleError,
    Decision,
    IdempotencyConflict,
    NotFound,
    QuotaExceeded,
    Subject,
    SubjectRef,
    TokenQuotaError,
    Usage,
    ValidationError,
)
from tokenquota.client._protocol import LineSplitter
from tokenquota.domain.clock import FrozenClock
from tokenquota.domain.errors import Forbidden, Unauthorized
from tokenquota.domain.keys import Role
from tokenquota.domain.limits import Source
from tokenquota.domain.metrics import Metric

NOW = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def frozen(make_api: ServerFactory) -> Api:
    return make_api(clock=FrozenClock(NOW))


def client(api: Api, key: str = ADMIN_KEY) -> Client:
    return Client(api.url, key, timeout=30)


def async_client(api: Api, key: str = ADMIN_KEY) -> AsyncClient:
    return AsyncClient(api.url, key, timeout=30)


# metering: check and consume ------------------------------------------------


def test_check_and_consume_round_trip(api: Api) -> None:
    api.quota.set_limit("user:alice", "tokens", "day", 10_000)
    with client(api) as quota:
        checked = quota.check("user:alice", tokens=500)
        assert isinstance(checked, Decision)
        assert checked.allowed
        assert api.quota.events().total == 0

        decision = quota.consume(
            "user:alice", {"tokens": 1200}, model="gpt-4o", tags={"feature": "chat"}
        )
    assert decision.allowed
    assert decision.event_id is not None
    assert decision.amounts == {"tokens": 1200, "requests": 1}
    assert decision.limits[0].remaining == 8_800
    event = api.quota.events().items[0]
    assert (event.model, dict(event.tags)) == ("gpt-4o", {"feature": "chat"})


@pytest.mark.anyio
async def test_async_check_and_consume_round_trip(api: Api) -> None:
    api.quota.set_limit("user:alice", "tokens", "day", 10_000)
    async with async_client(api) as quota:
        assert (await quota.check("user:alice", tokens=20_000)).allowed is False
        decision = await quota.consume("user:alice", input_tokens=700, output_tokens=500)
    assert decision.allowed
    assert decision.amounts["tokens"] == 1200
    assert decision.limits[0].remaining == 8_800
    assert api.quota.usage("user:alice").limits[0].used == 1200


def test_denied_consume_raises_quota_exceeded(frozen: Api) -> None:
    frozen.quota.set_parents("user:alice", ["company:acme"])
    frozen.quota.set_limit("company:acme", "tokens", "day", 1_000)
    with client(frozen) as quota:
        quota.consume("user:alice", tokens=900)
        with pytest.raises(QuotaExceeded) as caught:
            quota.consume("user:alice", tokens=200)
        # check never raises: a denial is an answer there.
        assert quota.check("user:alice", tokens=200).allowed is False
    exc = caught.value
    assert isinstance(exc, TokenQuotaError)
    assert (exc.code, exc.status) == ("quota_exceeded", 429)
    assert exc.retry_after == 3600  # midnight, one hour after NOW
    assert [(s.subject, s.metric, s.window) for s in exc.blocked_by] == [
        ("company:acme", "tokens", "day")
    ]
    assert exc.decision.allowed is False
    assert exc.decision.amounts["tokens"] == 200
    assert frozen.quota.usage("company:acme").limits[0].used == 900


@pytest.mark.anyio
async def test_async_denied_consume_raises_quota_exceeded(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "tokens", "total", 100)
    async with async_client(frozen) as quota:
        with pytest.raises(QuotaExceeded) as caught:
            await quota.consume("user:alice", tokens=101)
    assert caught.value.retry_after is None  # a total window never resets
    assert caught.value.blocked_by[0].window == "total"


def test_bad_input_raises_validation_error_with_the_field(api: Api) -> None:
    with client(api) as quota:
        cases: dict[str, Callable[[], Decision]] = {
            "amounts.tokens": lambda: quota.consume("user:alice", tokens=-1),
            "mode": lambda: quota.consume("user:alice", mode="maybe"),
            "timestamp": lambda: quota.consume(
                "user:alice",
                timestamp=datetime(2026, 1, 1),  # noqa: DTZ001 (naive on purpose)
            ),
            "subject": lambda: quota.check("alice"),
            "amounts.credits": lambda: quota.consume("user:alice", credits="0.0000000001"),
        }
        for field, call in cases.items():
            with pytest.raises(ValidationError) as caught:
                call()
            assert caught.value.field == field
            assert caught.value.status == 422
            assert caught.value.message.startswith(f"{field}: ")
        # Caught before sending: one amount given two ways.
        with pytest.raises(ValidationError, match="given twice") as twice:
            quota.consume("user:alice", {"tokens": 1}, tokens=2)
        assert twice.value.field == "amounts.tokens"
    assert api.quota.events().total == 0


def test_a_bad_key_is_unauthorized(api: Api) -> None:
    with client(api, "tq_0123456789abcdef_" + "x" * 43) as quota, pytest.raises(Unauthorized):
        quota.consume("user:alice", tokens=1)


@pytest.mark.anyio
async def test_async_bad_key_is_unauthorized(api: Api) -> None:
    async with async_client(api, "nope") as quota:
        with pytest.raises(Unauthorized) as caught:
            await quota.check("user:alice")
    assert caught.value.status == 401


def test_a_member_key_may_not_spend_for_another_subject(api: Api) -> None:
    with client(api, api.key("member", "user:alice")) as quota:
        assert quota.consume("user:alice", tokens=5).allowed
        with pytest.raises(Forbidden) as caught:
            quota.consume("user:bob", tokens=5)
    assert (caught.value.code, caught.value.status) == ("forbidden", 403)
    assert api.quota.events().total == 1


def test_idempotent_retries_charge_once(api: Api) -> None:
    with client(api, api.key("service")) as quota:
        first = quota.consume("user:alice", tokens=100, idempotency_key="req-1")
        again = quota.consume("user:alice", tokens=100, idempotency_key="req-1")
        with pytest.raises(IdempotencyConflict) as caught:
            quota.consume("user:alice", tokens=999, idempotency_key="req-1")
    assert not first.replayed
    assert again.replayed
    assert again.event_id == first.event_id
    assert isinstance(caught.value, Conflict)
    assert caught.value.status == 409
    assert api.quota.events().total == 1


@pytest.mark.anyio
async def test_async_idempotent_retries_charge_once(api: Api) -> None:
    async with async_client(api) as quota:
        first = await quota.consume("user:alice", tokens=100, idempotency_key="req-1")
        again = await quota.consume("user:alice", tokens=100, idempotency_key="req-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert api.quota.events().total == 1


def test_credits_come_back_as_decimal(api: Api) -> None:
    api.quota.set_limit("user:alice", "credits", "month", "10")
    with client(api) as quota:
        decision = quota.consume("user:alice", credits=Decimal("0.25"))
        decision = quota.consume("user:alice", {"credits": "0.125"})
    credits = next(s for s in decision.limits if s.metric == "credits")
    assert decision.amounts["credits"] == Decimal("0.125")
    assert isinstance(decision.amounts["credits"], Decimal)
    assert credits.limit == Decimal(10)
    assert credits.used == Decimal("0.375")
    assert credits.remaining == Decimal("9.625")
    assert isinstance(credits.remaining, Decimal)


def test_unknown_error_codes_raise_the_base_error(api: Api) -> None:
    with client(api) as quota, pytest.raises(TokenQuotaError) as caught:
        quota.put_subject("user:alice", metadata={"x": "y" * 300_000})  # over max_body_bytes
    assert type(caught.value) is TokenQuotaError
    assert "payload_too_large" in str(caught.value)


# reads: usage, history, events ----------------------------------------------


def test_export_lines_keep_their_endings_across_chunks() -> None:
    lines = LineSplitter()
    assert lines.feed('1,"a\r') == []
    assert lines.feed('\nb",x\r\n2,') == ['1,"a\r\n', 'b",x\r\n']
    assert lines.feed("y\n") == ["2,y\n"]
    assert lines.feed("3,z") == []
    assert lines.end() == ["3,z"]
    assert lines.end() == []


def test_usage_matches_the_engine(frozen: Api) -> None:
    frozen.quota.set_parents("user:alice", ["company:acme"])
    frozen.quota.set_limit("user:alice", "tokens", "day", 10_000)
    frozen.quota.set_limit("company:acme", "credits", "month", "100")
    with client(frozen) as quota:
        quota.consume("user:alice", tokens=1200, credits="1.5")
        usage = quota.usage("user:alice")
        with_ancestors = quota.usage("user:alice", include_ancestors=True)
    assert isinstance(usage, Usage)
    assert usage == frozen.quota.usage("user:alice")
    assert with_ancestors == frozen.quota.usage("user:alice", include_ancestors=True)
    assert [s.subject for s in with_ancestors.limits] == ["user:alice", "company:acme"]
    assert with_ancestors.limits[1].remaining == Decimal("98.5")


@pytest.mark.anyio
async def test_async_usage_and_member_scope(api: Api) -> None:
    api.quota.set_limit("user:alice", "tokens", "day", 10_000)
    async with async_client(api, api.key("member", "user:alice")) as quota:
        await quota.consume("user:alice", tokens=10)
        usage = await quota.usage("user:alice")
        with pytest.raises(Forbidden):
            await quota.usage("user:bob")
    assert usage.limits[0].used == 10


def test_history_events_and_exports_match_the_engine(frozen: Api) -> None:
    clock = frozen.clock
    assert clock is not None
    with client(frozen) as quota:
        quota.consume("user:alice", tokens=100, model="m1", credits="0.5")
        quota.consume("user:alice", tokens=50, model="m2", timestamp=NOW - timedelta(hours=2))
        quota.consume("user:bob", tokens=7, idempotency_key="b-1", tags={"a": "b"})

        start, end = NOW - timedelta(days=1), NOW + timedelta(hours=1)
        by_model = quota.history(
            "user:alice", start=start, end=end, granularity="hour", group_by="model"
        )
        assert by_model == frozen.quota.history(
            "user:alice", start=start, end=end, granularity="hour", group_by="model"
        )
        assert {(p.metric, p.model, p.value) for p in by_model if p.metric == "tokens"} == {
            ("tokens", "m1", 100),
            ("tokens", "m2", 50),
        }
        assert quota.history("user:alice") == frozen.quota.history("user:alice")

        page = quota.events(offset=1, limit=2)
        assert page == frozen.quota.events(offset=1, limit=2)
        assert quota.events(subject="user:alice") == frozen.quota.events(subject="user:alice")
        alice = quota.events(subject="user:alice").items
        assert alice[0].amounts[Metric.CREDITS] == 500_000_000  # units, as the engine keeps them
        assert list(quota.iter_events()) == list(frozen.quota.iter_events())

        quota.consume("user:carol", tokens=1, model="two\nlines")
        rows = list(csv.DictReader(quota.export_events("csv")))
        jsonl = [json.loads(line) for line in quota.export_events("jsonl", subject="user:bob")]
        with pytest.raises(ValidationError) as caught:
            quota.export_events("xml")  # type: ignore[arg-type]
    assert caught.value.field == "format"
    assert [(r["subject"], r["tokens"]) for r in rows] == [
        ("user:alice", "100"),
        ("user:alice", "50"),
        ("user:bob", "7"),
        ("user:carol", "1"),
    ]
    assert rows[-1]["model"] == "two\nlines"  # a quoted newline survives the line split
    assert len(jsonl) == 1
    assert jsonl[0]["subject"] == "user:bob"


@pytest.mark.anyio
async def test_async_events_and_export(api: Api) -> None:
    async with async_client(api) as quota:
        for n in range(3):
            await quota.consume("user:alice", tokens=n + 1)
        page = await quota.events(subject="user:alice", limit=2)
        every = [e async for e in quota.iter_events(subject="user:alice")]
        lines = [line async for line in quota.export_events("jsonl")]
    assert page == api.quota.events(subject="user:alice", limit=2)
    assert every == list(api.quota.iter_events(subject="user:alice"))
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in every]


# admin: subjects, limits, plans, defaults, keys, audit ----------------------


def test_subjects_crud(api: Api) -> None:
    with client(api) as quota:
        acme = quota.put_subject("company:acme", name="Acme", metadata={"tier": "gold"})
        assert acme == Subject(SubjectRef("company", "acme"), "Acme", {"tier": "gold"})
        alice = quota.put_subject("user:alice", parents=["company:acme"])
        assert alice.parents == (SubjectRef("company", "acme"),)
        assert quota.set_parents("user:bob", ["company:acme"]).parents == alice.parents
        assert quota.get_subject("user:alice") == api.quota.get_subject("user:alice")

        children = quota.list_subjects(parent="company:acme")
        assert [s.ref for s in children.items] == [
            SubjectRef("user", "alice"),
            SubjectRef("user", "bob"),
        ]
        assert (children.total, children.offset) == (2, 0)
        assert quota.list_subjects(kind="company", limit=1).items == [acme]

        with pytest.raises(CycleError):
            quota.set_parents("company:acme", ["user:alice"])
        with pytest.raises(Conflict):
            quota.delete_subject("company:acme")  # still has children
        quota.delete_subject("user:bob")
        with pytest.raises(NotFound):
            quota.get_subject("user:bob")
        with pytest.raises(ValidationError) as caught:
            quota.get_subject("not a ref")
    assert caught.value.field == "subject"


@pytest.mark.anyio
async def test_async_limits_plans_and_defaults(api: Api) -> None:
    async with async_client(api) as quota:
        view = await quota.set_limit("user:alice", "tokens", "day", 10_000)
        assert view == api.quota.limits("user:alice")
        assert [(e.key.metric, e.source) for e in view.effective] == [
            (Metric.TOKENS, Source.OVERRIDE)
        ]

        gold = await quota.create_plan(
            "Gold",
            [
                {"metric": "credits", "window": "month", "limit": "2000"},
                {"metric": "requests", "window": "minute", "limit": 100},
            ],
        )
        assert gold == api.quota.get_plan(gold.id)
        assert await quota.get_plan(gold.id) == gold
        assert await quota.plans() == [gold]

        on_plan = await quota.assign_plan("user:alice", gold.id)
        assert on_plan.plan == gold
        assert await quota.limits("user:alice") == api.quota.limits("user:alice")
        usage = await quota.usage("user:alice")
        credits = next(s for s in usage.limits if s.metric == "credits")
        assert (credits.limit, credits.source) == (Decimal(2000), "plan")

        renamed = await quota.update_plan(gold.id, name="Gold 2")
        assert (renamed.id, renamed.name, renamed.rules) == (gold.id, "Gold 2", gold.rules)
        assert (await quota.assign_plan("user:alice", None)).plan is None
        await quota.delete_plan(gold.id)
        with pytest.raises(NotFound):
            await quota.get_plan(gold.id)

        defaults = await quota.set_default("user", "requests", "minute", 60)
        assert defaults == api.quota.defaults()
        assert [(d.kind, d.origin) for d in defaults] == [("user", "runtime")]
        assert await quota.defaults() == defaults
        bob = await quota.limits("user:bob")
        assert [e.source for e in bob.effective] == [Source.DEFAULT]
        assert (
            await quota.set_defaults(
                [{"kind": "user", "metric": "requests", "window": "minute", "limit": None}]
            )
            == []
        )


def test_limits_and_plans_sync(api: Api) -> None:
    with client(api) as quota:
        view = quota.set_limits(
            "user:alice",
            [
                {"metric": "tokens", "window": "day", "limit": 1000},
                {"metric": "credits", "window": "month", "limit": Decimal("2.5"), "shadow": True},
            ],
        )
        assert view == api.quota.limits("user:alice")
        assert quota.set_limit("user:alice", "tokens", "day", None).overrides == (
            api.quota.limits("user:alice").overrides
        )
        plan = quota.create_plan("Silver", [{"metric": "tokens", "window": "day", "limit": -1}])
        assert quota.update_plan(plan.id, rules=[]).rules == ()
        with pytest.raises(ValidationError) as caught:
            quota.set_limit("user:alice", "tokens", "fortnight", 1)
    assert caught.value.field == "limits[0].window"


def test_keys_and_audit(api: Api) -> None:
    with client(api) as quota:
        key, secret = quota.create_key("member", subject="user:alice", name="alice's laptop")
        assert (key.role, key.subject, key.name) == (
            Role.MEMBER,
            SubjectRef("user", "alice"),
            "alice's laptop",
        )
        assert key.revoked_at is None
        assert secret.startswith(f"tq_{key.id}_")
        with client(api, secret) as alice:
            assert alice.consume("user:alice", tokens=1).allowed

        listed = quota.list_keys()
        assert [k.id for k in listed.items] == [key.id]
        assert listed.items[0] == key

        quota.revoke_key(key.id)
        with client(api, secret) as alice, pytest.raises(Unauthorized):
            alice.consume("user:alice", tokens=1)
        with pytest.raises(NotFound):
            quota.revoke_key(key.id)
        with pytest.raises(ValidationError) as caught:
            quota.create_key("member")
        assert caught.value.field == "subject"

        quota.set_limit("user:alice", "tokens", "day", 10)
        trail = quota.audit(subject="user:alice")
        assert trail == api.quota.audit(subject="user:alice")
        assert [e.action for e in trail.items] == ["override.set"]
        assert trail.items[0].actor != "library"  # the server records who called
        assert quota.audit(limit=1).total == api.quota.audit().total


def test_member_and_service_keys_may_not_administer(api: Api) -> None:
    with client(api, api.key("service")) as service:
        with pytest.raises(Forbidden):
            service.create_key("admin")
        with pytest.raises(Forbidden):
            service.set_limit("user:alice", "tokens", "day", 1)
    with client(api, api.key("member", "user:alice")) as member:
        with pytest.raises(Forbidden):
            member.get_subject("user:bob")
        with pytest.raises(Forbidden):
            member.list_keys()

"""tokenquota.Client and AsyncClient against a real server: no mocks.

Where the engine the server runs on can answer the same question, the test
compares the client's answer with the engine's: the client must hand back
exactly what the embedded library would.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anyio
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import (
    AsyncClient,
    Client,
    Conflict,
    CycleError,
    Decision,
    IdempotencyConflict,
    Mode,
    NotFound,
    QuotaExceeded,
    Subject,
    SubjectRef,
    TokenQuotaError,
    Usage,
    ValidationError,
)
from tokenquota.client._answers import LineSplitter
from tokenquota.domain.clock import FrozenClock
from tokenquota.domain.errors import Forbidden, Unauthorized
from tokenquota.domain.holds import HoldState, ReservationClosed
from tokenquota.domain.keys import Role
from tokenquota.domain.limits import Source
from tokenquota.domain.metrics import Metric
from tokenquota.domain.views import Acquired, Reserved

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

        quota.consume("user:carol", tokens=1, model='two, "quoted"')
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
    # No event field may hold a line break any more (contract §1); the line
    # splitter's handling of quoted breaks is tested on its own above.
    assert rows[-1]["model"] == 'two, "quoted"'  # CSV quoting survives the round trip
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


# reservations and leases --------------------------------------------------------


def held_tokens(api: Api, subject: str = "user:alice") -> tuple[object, object]:
    (status,) = [s for s in api.quota.usage(subject).limits if s.metric == "tokens"]
    return status.used, status.reserved


def test_reserve_commit_and_release_match_the_engine(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "tokens", "day", 1_000)
    with client(frozen) as quota:
        reserved = quota.reserve("user:alice", {"tokens": 800}, ttl=timedelta(seconds=90))
        assert isinstance(reserved, Reserved)
        assert reserved.allowed
        held = reserved.reservation
        assert held is not None
        # The wire leaves out the ancestors charged and the commit's answer; all else is equal.
        assert held == replace(frozen.quota.get_reservation(held.id), charged=())
        assert held.expires_at == NOW + timedelta(seconds=90)
        assert reserved.decision.allowed
        assert reserved.decision.limits[0].reserved == 800
        assert held_tokens(frozen) == (0, 800)

        decision = quota.commit(held.id, tokens=500)
        assert (decision.allowed, decision.mode, decision.replayed) == (True, Mode.RECORD, False)
        assert frozen.quota.get_reservation(held.id).committed == decision
        again = quota.commit(held.id, {"tokens": 999})
        assert again == replace(decision, replayed=True)
        assert quota.get_reservation(held.id).state is HoldState.COMMITTED
        assert quota.release(held.id) is False
        assert held_tokens(frozen) == (500, 0)

        other = quota.reserve("user:alice", tokens=100).reservation
        assert other is not None
        assert quota.release(other.id) is True
        assert quota.release(other.id) is False
        with pytest.raises(ReservationClosed) as caught:
            quota.commit(other.id)
        estimate = quota.reserve("user:alice", tokens=40).reservation
        assert estimate is not None
        assert quota.commit(estimate.id).amounts == {"tokens": 40, "requests": 1}
    assert isinstance(caught.value, Conflict)
    assert (caught.value.code, caught.value.status) == ("hold_closed", 409)
    assert held_tokens(frozen) == (540, 0)


def test_a_refused_reserve_is_an_answer_not_an_exception(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "tokens", "total", 1_000)
    with client(frozen) as quota:
        assert quota.reserve("user:alice", tokens=800, ttl=45).allowed
        refused = quota.reserve("user:alice", tokens=300)
        never = quota.reserve("user:alice", tokens=5_000)
    assert (refused.allowed, refused.reservation) == (False, None)
    assert refused.decision.retry_after == 45  # when the first hold lapses
    assert [(s.metric, s.reserved) for s in refused.decision.blocked_by] == [("tokens", 800)]
    assert never.decision.retry_after is None
    assert held_tokens(frozen) == (0, 800)


def test_an_expired_reservation_cannot_be_committed(frozen: Api) -> None:
    assert frozen.clock is not None
    with client(frozen) as quota:
        held = quota.reserve("user:alice", tokens=100, ttl=30).reservation
        assert held is not None
        frozen.clock.advance(seconds=30)
        found = quota.get_reservation(held.id)
        # "expired" on the wire: held in name, live no more, as the engine keeps it.
        assert found.state is HoldState.HELD
        assert not found.live(frozen.clock.now())
        with pytest.raises(ReservationClosed, match="expired"):
            quota.commit(held.id, tokens=100)
        with pytest.raises(NotFound):
            quota.get_reservation("nope")
        with pytest.raises(ValidationError) as caught:
            quota.release("")  # refused before sending: it would be another route
    assert caught.value.field == "id"
    assert frozen.quota.events().total == 0


def test_the_reservation_context_manager_commits_releases_or_records(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "tokens", "day", 1_000)
    with client(frozen) as quota:
        with quota.reservation("user:alice", tokens=400) as hold:
            assert held_tokens(frozen) == (0, 400)
            assert hold.reservation.amounts[Metric.TOKENS] == 400
            hold.commit(tokens=150)
        assert hold.result is not None
        assert hold.result.allowed
        assert held_tokens(frozen) == (150, 0)

        with pytest.raises(RuntimeError), quota.reservation("user:alice", tokens=400) as failed:
            raise RuntimeError("the model call failed")
        assert frozen.quota.get_reservation(failed.id).state is HoldState.RELEASED
        assert held_tokens(frozen) == (150, 0)

        with quota.reservation("user:alice", {"tokens": 100}, ttl=30):
            pass
        assert held_tokens(frozen) == (250, 0)

        with (
            pytest.raises(QuotaExceeded) as caught,
            quota.reservation("user:alice", tokens=5_000),
        ):
            pytest.fail("the block must not run")
    assert caught.value.blocked_by[0].metric == "tokens"
    assert caught.value.retry_after is None
    assert held_tokens(frozen) == (250, 0)


@pytest.mark.anyio
async def test_async_reservations_and_their_context_manager(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "tokens", "day", 1_000)
    async with async_client(frozen) as quota:
        reserved = await quota.reserve("user:alice", tokens=300)
        assert reserved.reservation is not None
        assert (await quota.get_reservation(reserved.reservation.id)) == replace(
            frozen.quota.get_reservation(reserved.reservation.id), charged=()
        )
        assert (await quota.commit(reserved.reservation.id, tokens=200)).allowed
        assert await quota.release(reserved.reservation.id) is False
        refused = await quota.reserve("user:alice", tokens=900)
        assert (refused.allowed, refused.decision.retry_after) == (False, 3600)

        async with quota.reservation("user:alice", tokens=400) as hold:
            assert held_tokens(frozen) == (200, 400)
            await hold.commit(tokens=100)
        assert held_tokens(frozen) == (300, 0)

        with pytest.raises(RuntimeError):
            async with quota.reservation("user:alice", tokens=400):
                raise RuntimeError("the model call failed")
        async with quota.reservation("user:alice", tokens=50):
            pass
        assert held_tokens(frozen) == (350, 0)

        # A cancelled task frees its hold at once rather than at the TTL.
        with anyio.CancelScope() as scope:
            async with quota.reservation("user:alice", tokens=600, ttl=3600):
                assert held_tokens(frozen) == (350, 600)
                scope.cancel()
                await anyio.sleep(30)
        assert scope.cancelled_caught
        assert held_tokens(frozen) == (350, 0)

        with pytest.raises(QuotaExceeded):
            async with quota.reservation("user:alice", tokens=700):
                pytest.fail("the block must not run")


def test_leases_match_the_engine(frozen: Api) -> None:
    assert frozen.clock is not None
    frozen.quota.set_limit("user:alice", "concurrent_requests", None, 1)
    with client(frozen, frozen.key("member", "user:alice")) as quota:
        acquired = quota.acquire("user:alice", ttl=10)
        assert isinstance(acquired, Acquired)
        lease = acquired.lease
        assert lease is not None
        assert lease == replace(frozen.quota.get_lease(lease.id), charged=())
        refused = quota.acquire("user:alice")
        assert (refused.allowed, refused.lease, refused.decision.retry_after) == (False, None, 10)

        frozen.clock.advance(seconds=8)
        extended = quota.heartbeat(lease.id, ttl=10)
        assert extended.expires_at == NOW + timedelta(seconds=18)
        assert extended == quota.get_lease(lease.id)
        assert quota.release_lease(lease.id) is True
        assert quota.release_lease(lease.id) is False
        released = quota.get_lease(lease.id)
        assert released.released_at == NOW + timedelta(seconds=8)
        assert released == replace(frozen.quota.get_lease(lease.id), charged=())
        with pytest.raises(ReservationClosed):
            quota.heartbeat(lease.id)

        with quota.lease("user:alice", ttl=5) as held:
            assert held.live(frozen.clock.now())
            with pytest.raises(QuotaExceeded) as caught, quota.lease("user:alice"):
                pytest.fail("the block must not run")
        assert frozen.quota.get_lease(held.id).released_at is not None
        with pytest.raises(RuntimeError), quota.lease("user:alice"):
            raise RuntimeError("the model call failed")
        assert quota.acquire("user:alice").allowed  # every slot was given back
        with pytest.raises(Forbidden):
            quota.acquire("user:bob")
    assert caught.value.blocked_by[0].metric == "concurrent_requests"
    assert caught.value.retry_after == 5


@pytest.mark.anyio
async def test_async_leases_and_their_context_manager(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "concurrent_requests", None, 1)
    async with async_client(frozen) as quota:
        acquired = await quota.acquire("user:alice")
        assert acquired.lease is not None
        assert (await quota.acquire("user:alice")).lease is None
        assert (await quota.heartbeat(acquired.lease.id, ttl=120)).expires_at == NOW + timedelta(
            seconds=120
        )
        assert (await quota.get_lease(acquired.lease.id)).live(NOW)
        assert await quota.release_lease(acquired.lease.id) is True

        async with quota.lease("user:alice") as lease:
            with pytest.raises(QuotaExceeded):
                async with quota.lease("user:alice"):
                    pytest.fail("the block must not run")
        assert not (await quota.get_lease(lease.id)).live(NOW)

        with anyio.CancelScope() as scope:
            async with quota.lease("user:alice") as cancelled:
                scope.cancel()
                await anyio.sleep(30)
        assert frozen.quota.get_lease(cancelled.id).released_at is not None
        with pytest.raises(NotFound):
            await quota.release_lease("nope")


def test_client_passes_the_resource_through(api: Api) -> None:
    api.quota.set_resource_quota(
        "deployment:llama",
        {"default_rules": [{"metric": "requests", "window": "minute", "limit": 1}]},
    )
    with Client(api.url, ADMIN_KEY) as client:
        assert client.consume("user:alice", resource="deployment:llama").allowed
        with pytest.raises(QuotaExceeded):
            client.consume("user:alice", resource="deployment:llama")
        assert not client.check("user:alice", resource="deployment:llama").allowed
        assert not client.reserve("user:alice", resource="deployment:llama").allowed
        acquired = client.acquire("user:alice", resource="deployment:llama")
        assert acquired.lease is not None
        assert acquired.lease.resource is not None


# prepaid credits ----------------------------------------------------------------


def test_grants_and_balance_match_the_engine(frozen: Api) -> None:
    with client(frozen) as quota:
        assert quota.balance("user:alice") is None  # never granted: not prepaid
        assert quota.grants("user:alice") == []
        first = quota.grant("user:alice", Decimal("2.5"), expires_at=NOW + timedelta(days=1))
        second = quota.grant("user:alice", 1)
        assert (first.amount, first.remaining, first.expires_at) == (
            2_500_000_000,
            2_500_000_000,
            NOW + timedelta(days=1),
        )
        assert second.expires_at is None
        quota.consume("user:alice", credits=Decimal("0.75"))
        grants = quota.grants("user:alice")
        assert grants == frozen.quota.grants("user:alice")
        assert {g.id: g.remaining for g in grants} == {
            first.id: 1_750_000_000,  # the grant that lapses first is spent first
            second.id: 1_000_000_000,
        }
        wallet = quota.balance("user:alice")
        assert wallet == frozen.quota.balance("user:alice")
        assert wallet is not None
        assert (wallet.remaining, wallet.granted) == (2_750_000_000, 3_500_000_000)
        assert wallet.next_expiry == NOW + timedelta(days=1)

        refused: list[tuple[Callable[[], object], str]] = [
            (lambda: quota.grant("user:alice", 0), "credits"),
            (lambda: quota.grant("user:alice", True), "credits"),
            (lambda: quota.grant("user:alice", 1, expires_at=NOW), "expires_at"),
        ]
        for bad, field in refused:
            with pytest.raises(ValidationError) as caught:
                bad()
            assert caught.value.field == field
        with pytest.raises(ValidationError) as caught:
            quota.grants("no-kind")
        assert caught.value.field == "subject"  # refused before a request is sent
    assert len(frozen.quota.grants("user:alice")) == 2  # the refused grants changed nothing


def test_a_member_key_reads_its_own_grants_but_may_not_grant(api: Api) -> None:
    api.quota.grant("user:alice", 5)
    with client(api, api.key("member", "user:alice")) as quota:
        assert quota.grants("user:alice") == api.quota.grants("user:alice")
        with pytest.raises(Forbidden):
            quota.grant("user:alice", 5)
        with pytest.raises(Forbidden):
            quota.balance("user:bob")


@pytest.mark.anyio
async def test_async_grants_and_balance(frozen: Api) -> None:
    async with async_client(frozen) as quota:
        assert await quota.balance("user:alice") is None
        granted = await quota.grant("user:alice", "1.5")
        assert await quota.grants("user:alice") == [granted] == frozen.quota.grants("user:alice")
        assert await quota.balance("user:alice") == frozen.quota.balance("user:alice")


# resource quotas ----------------------------------------------------------------

RESOURCE_QUOTA: dict[str, object] = {
    "default_rules": [{"metric": "requests", "window": "minute", "limit": 10}],
    "policies": [
        {
            "consumer": "company:acme",
            "rules": [{"metric": "tokens", "window": "minute", "limit": 5_000}],
            "reserved": "0.25",
        }
    ],
    "capacity": {"value": 20_000, "units": "tokens"},
    "saturation_threshold": 0.8,
}


def test_resource_quotas_match_the_engine(api: Api) -> None:
    with client(api) as quota:
        stored = quota.set_resource_quota("deployment:llama", RESOURCE_QUOTA)
        assert stored == api.quota.get_resource_quota("deployment:llama")
        assert quota.get_resource_quota("deployment:llama") == stored
        assert stored.policies[0].reserved == Decimal("0.25")
        assert stored.saturation_threshold == Decimal("0.8")

        bad = {"policies": [{"consumer": "company:acme", "rules": [], "reserved": 2}]}
        with pytest.raises(ValidationError) as caught:
            quota.set_resource_quota("deployment:llama", bad)
        with pytest.raises(ValidationError) as direct:
            api.quota.set_resource_quota("deployment:llama", bad)
        assert caught.value.field == direct.value.field == "policies[0].reserved"
        assert quota.get_resource_quota("deployment:llama") == stored  # the refusal changed nothing

        quota.delete_resource_quota("deployment:llama")
        with pytest.raises(NotFound):
            quota.get_resource_quota("deployment:llama")
        with pytest.raises(NotFound):
            quota.delete_resource_quota("deployment:llama")
        with pytest.raises(ValidationError) as caught:
            quota.get_resource_quota("a/b")
        assert caught.value.field == "resource"


def test_a_member_key_may_not_set_resource_quotas(api: Api) -> None:
    with client(api, api.key("member", "user:alice")) as quota, pytest.raises(Forbidden):
        quota.set_resource_quota("deployment:llama", RESOURCE_QUOTA)
    with pytest.raises(NotFound):
        api.quota.get_resource_quota("deployment:llama")


@pytest.mark.anyio
async def test_async_resource_quotas(api: Api) -> None:
    async with async_client(api) as quota:
        stored = await quota.set_resource_quota("deployment:llama", RESOURCE_QUOTA)
        assert await quota.get_resource_quota("deployment:llama") == stored
        await quota.delete_resource_quota("deployment:llama")
        with pytest.raises(NotFound):
            await quota.get_resource_quota("deployment:llama")


# shadow limits ------------------------------------------------------------------


def test_shadow_hits_match_the_engine(frozen: Api) -> None:
    frozen.quota.set_limits(
        "user:alice",
        [
            {"metric": "tokens", "window": "day", "limit": 50, "shadow": True},
            {"metric": "requests", "window": "day", "limit": 100, "shadow": True},
        ],
    )
    with client(frozen) as quota:
        assert quota.shadow_hits("user:alice") == {} == frozen.quota.shadow_hits("user:alice")
        quota.consume("user:alice", tokens=40)
        quota.consume("user:alice", tokens=40)  # past the shadow 50: counted, not blocked
        quota.consume("user:alice", tokens=1)
        assert quota.shadow_hits("user:alice") == {"tokens/day": 2}
        assert quota.shadow_hits("user:alice") == frozen.quota.shadow_hits("user:alice")
        assert quota.shadow_hits("user:bob") == {}


@pytest.mark.anyio
async def test_async_shadow_hits(frozen: Api) -> None:
    frozen.quota.set_limit("user:alice", "requests", "day", 1, shadow=True)
    async with async_client(frozen) as quota:
        await quota.consume("user:alice", requests=1)
        await quota.consume("user:alice", requests=1)
        assert await quota.shadow_hits("user:alice") == {"requests/day": 1}
        assert await quota.shadow_hits("user:alice") == frozen.quota.shadow_hits("user:alice")

"""Threshold alerts (issue 14, part 1): thresholds on rules, and the alert outbox
written in the same atomic step as the decision, on every backend.

The events are read back from where each store keeps them (the memory state,
the SQL ``alert_events`` table; on Redis after the mover has moved them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.conftest import migrated_sqlite
from tests.live import LiveServer
from tokenquota import FrozenClock, Quota, ValidationError
from tokenquota import open as tokenquota_open
from tokenquota.api.app import create_app
from tokenquota.domain.clock import to_micros
from tokenquota.settings import Settings
from tokenquota.storage.memory.store import MemoryStore
from tokenquota.storage.redis.store import RedisStore
from tokenquota.storage.sql import schema as t

Row = tuple[str, str, str, str, int | None, int | None, int, int]


def recorded(quota: Quota) -> list[Row]:
    """(kind, subject, metric, window, period_start µs, threshold, used, limit) in time order."""
    store: Any = quota.store
    if isinstance(store, MemoryStore):
        return [
            (
                e.kind.value,
                e.subject,
                e.metric,
                e.window,
                None if e.period_start is None else to_micros(e.period_start),
                e.threshold,
                e.used,
                e.limit,
            )
            for e in store.meter._s.alert_events
        ]
    if isinstance(store, RedisStore):
        store.flush()  # the mover: what the steps put on the streams, into SQL
    a = t.alert_events.c
    with store.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                a.kind,
                a.subject,
                a.metric,
                a.window,
                a.period_start,
                a.threshold,
                a.used,
                a.limit_value,
            )
            # A cluster's mover copies shard after shard, so ids need not follow time
            # there (docs/alerts.md); within a frozen instant, usage only grows.
            .order_by(a.at, a.used, a.id)
        ).all()
    return [tuple(r) for r in rows]


def crossings(quota: Quota) -> list[tuple[int | None, int]]:
    """(threshold, used) of every threshold.crossed row."""
    return [(r[5], r[6]) for r in recorded(quota) if r[0] == "threshold.crossed"]


def kinds(quota: Quota) -> list[str]:
    return [r[0] for r in recorded(quota)]


DAY = int(timedelta(days=1).total_seconds() * 1_000_000)


def test_each_threshold_is_recorded_once_when_usage_crosses_it(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[100, 50, 80])
    assert quota.consume("user:ann", tokens=40).allowed
    assert crossings(quota) == []
    quota.consume("user:ann", tokens=15)  # 55: past 50
    assert crossings(quota) == [(50, 55)]
    quota.consume("user:ann", tokens=10)  # 65: nothing new
    quota.consume("user:ann", tokens=15)  # 80: exactly at 80 reaches it
    quota.consume("user:ann", tokens=20)  # 100: reaches 100
    assert crossings(quota) == [(50, 55), (80, 80), (100, 100)]
    rows = recorded(quota)
    assert {r[1:5] for r in rows} == {("user:ann", "tokens", "day", rows[0][4])}
    assert all(r[7] == 100 for r in rows)


def test_one_consume_crossing_two_marks_records_both(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50, 80, 100])
    quota.consume("user:ann", tokens=85)
    assert crossings(quota) == [(50, 85), (80, 85)]


def test_a_new_period_records_again(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50])
    quota.consume("user:ann", tokens=60)
    clock.advance(timedelta(days=1))
    quota.consume("user:ann", tokens=10)
    assert crossings(quota) == [(50, 60)]  # 10 of the new day: below 50
    quota.consume("user:ann", tokens=45)
    rows = [r for r in recorded(quota) if r[0] == "threshold.crossed"]
    assert [(r[5], r[6]) for r in rows] == [(50, 60), (50, 55)]
    first, second = (r[4] for r in rows)
    assert first is not None
    assert second == first + DAY


def test_a_rolling_window_records_once_per_epoch_of_its_length(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "rolling:1h", 100, thresholds=[50])
    quota.consume("user:ann", tokens=60)
    rows = recorded(quota)
    assert [r[5] for r in rows] == [50]
    period = rows[0][4]
    assert period is not None
    assert period % (3_600 * 1_000_000) == 0


def test_a_total_window_has_no_period(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "total", 100, thresholds=[50])
    quota.consume("user:ann", tokens=60)
    assert [(r[4], r[5]) for r in recorded(quota)] == [(None, 50)]


def test_a_denial_is_recorded_once_per_period(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100)
    quota.consume("user:ann", tokens=100)
    for _ in range(3):
        assert not quota.consume("user:ann", tokens=1).allowed
    rows = recorded(quota)
    assert [(r[0], r[5], r[6], r[7]) for r in rows] == [("limit.denied", None, 100, 100)]
    clock.advance(timedelta(days=1))
    quota.consume("user:ann", tokens=100)
    assert not quota.consume("user:ann", tokens=1).allowed
    assert kinds(quota) == ["limit.denied", "limit.denied"]


def test_record_mode_is_never_denied_but_crosses_past_100(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[100, 150])
    quota.consume("user:ann", tokens=160, mode="record")
    assert crossings(quota) == [(100, 160), (150, 160)]


def test_a_shadow_limit_that_would_block_is_recorded_once_per_period(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_limit("user:ann", "tokens", "day", 1_000)
    quota.set_limit("user:ann", "tokens", "hour", 10, shadow=True)
    quota.consume("user:ann", tokens=10)
    for _ in range(3):
        assert quota.consume("user:ann", tokens=5).allowed  # a trial never blocks
    rows = recorded(quota)
    assert [(r[0], r[3]) for r in rows] == [("shadow.blocked", "hour")]
    clock.advance(timedelta(hours=1))
    quota.consume("user:ann", tokens=10)
    quota.consume("user:ann", tokens=1)
    assert kinds(quota) == ["shadow.blocked", "shadow.blocked"]


def test_thresholds_from_a_plan(quota: Quota) -> None:
    plan = quota.create_plan(
        "pro", [{"metric": "tokens", "window": "day", "limit": 100, "thresholds": [80]}]
    )
    assert plan.rules[0].thresholds == (80,)
    quota.assign_plan("user:ann", plan.id)
    effective = quota.limits("user:ann").effective
    assert [(e.source.value, e.thresholds) for e in effective] == [("plan", (80,))]
    quota.consume("user:ann", tokens=90)
    assert crossings(quota) == [(80, 90)]


def test_thresholds_from_the_defaults_of_a_kind(quota: Quota) -> None:
    quota.set_default("user", "tokens", "day", 100, thresholds=[50])
    assert [d.rule.thresholds for d in quota.defaults()] == [(50,)]
    quota.consume("user:bob", tokens=70)
    assert crossings(quota) == [(50, 70)]


def test_an_override_replaces_the_plans_thresholds_with_its_own(quota: Quota) -> None:
    plan = quota.create_plan(
        "pro", [{"metric": "tokens", "window": "day", "limit": 100, "thresholds": [10]}]
    )
    quota.assign_plan("user:ann", plan.id)
    quota.set_limit("user:ann", "tokens", "day", 200)  # no thresholds of its own
    quota.consume("user:ann", tokens=150)
    assert crossings(quota) == []


def test_an_ancestors_thresholds_name_the_ancestor(quota: Quota) -> None:
    quota.set_parents("user:ann", ["team:red"])
    quota.set_limit("team:red", "tokens", "day", 100, thresholds=[50])
    quota.consume("user:ann", tokens=60)
    assert [(r[1], r[5]) for r in recorded(quota)] == [("team:red", 50)]


def test_changing_thresholds_is_an_audited_configuration_change(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100)
    before = quota.audit().total
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[90])
    assert quota.audit().total == before + 1
    assert quota.limits("user:ann").overrides[0].thresholds == (90,)
    quota.consume("user:ann", tokens=95)  # planned from the new configuration
    assert crossings(quota) == [(90, 95)]


def test_an_idempotent_replay_records_nothing(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50])
    first = quota.consume("user:ann", tokens=60, idempotency_key="k1")
    clock.advance(timedelta(days=1))  # a new period: a replay deciding again would cross
    again = quota.consume("user:ann", tokens=60, idempotency_key="k1")
    assert again.replayed
    assert again.event_id == first.event_id
    assert crossings(quota) == [(50, 60)]


def test_a_reservation_crosses_when_it_is_committed(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50])
    held = quota.reserve("user:ann", tokens=80)
    reservation = held.reservation
    assert held.decision.allowed
    assert reservation is not None
    assert crossings(quota) == []  # a hold is not usage
    quota.commit(reservation.id, tokens=60)
    assert crossings(quota) == [(50, 60)]


def test_rebuild_leaves_the_outbox_alone(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50])
    quota.consume("user:ann", tokens=60)
    before = recorded(quota)
    quota.rebuild()
    assert recorded(quota) == before
    assert quota.usage("user:ann").limits[0].used == 60
    quota.consume("user:ann", tokens=1)
    assert recorded(quota) == before


def test_racing_threads_record_each_threshold_once(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 1_000, thresholds=[50, 80, 100])
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def spend() -> None:
        try:
            start.wait()
            for _ in range(8):
                quota.consume("user:ann", tokens=10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=spend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert quota.usage("user:ann").limits[0].used == 1_000
    assert sorted(th or 0 for th, _ in crossings(quota)) == [50, 80, 100]
    assert sorted(used for _, used in crossings(quota)) == [500, 800, 1_000]
    assert kinds(quota).count("limit.denied") == 1


# over HTTP ----------------------------------------------------------------------------
ADMIN = "alerts-test-admin-key-0123456789abcdef"


@pytest.fixture
def http(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: FrozenClock
) -> Iterator[tuple[httpx.Client, Quota]]:
    """A live server on ``backend``, and its admin client."""
    redis = None
    if backend == "memory":
        db = "memory://"
    elif backend == "sqlite":
        db = migrated_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "a.db")
    else:
        db = request.getfixturevalue("postgres_url")
        if backend != "postgres":
            redis = request.getfixturevalue("redis_url" if backend == "redis" else "cluster_url")
    settings = Settings(db=db, redis=redis, admin_key=SecretStr(ADMIN))
    server = LiveServer(create_app(settings, clock=clock))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            yield client, server.app.state.quota
    finally:
        server.stop()


def _state(client: httpx.Client) -> tuple[Any, ...]:
    return (
        client.get("/v1/subjects/user:ann/limits").json(),
        client.get("/v1/plans").json(),
        client.get("/v1/defaults").json(),
        client.get("/v1/audit").json()["total"],
    )


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/subjects/user:ann/limits",
            {"limits": [{"metric": "tokens", "window": "day", "limit": 9, "thresholds": [50, 0]}]},
            "limits[0].thresholds[1]",
        ),
        (
            "/v1/subjects/user:ann/limits",
            {"limits": [{"metric": "tokens", "window": "day", "limit": 9, "thresholds": "50"}]},
            "limits[0].thresholds",
        ),
        (
            "/v1/plans",
            {
                "name": "bad",
                "rules": [{"metric": "tokens", "window": "day", "limit": 9, "thresholds": [1001]}],
            },
            "rules[0].thresholds[0]",
        ),
        (
            "/v1/plans",
            {
                "name": "bad",
                "rules": [
                    {
                        "metric": "tokens",
                        "window": "day",
                        "limit": 9,
                        "thresholds": list(range(1, 12)),
                    }
                ],
            },
            "rules[0].thresholds",
        ),
        (
            "/v1/defaults",
            {
                "defaults": [
                    {"kind": "user", "metric": "tokens", "window": "day", "limit": 9},
                    {
                        "kind": "team",
                        "metric": "tokens",
                        "window": "day",
                        "limit": 9,
                        "thresholds": [True],
                    },
                ]
            },
            "defaults[1].thresholds[0]",
        ),
    ],
)
def test_bad_thresholds_over_http_are_a_422_naming_the_field_and_change_nothing(
    http: tuple[httpx.Client, Quota], path: str, body: dict[str, Any], field: str
) -> None:
    client, _ = http
    method = client.put if path != "/v1/plans" else client.post
    seed = {"limits": [{"metric": "tokens", "window": "day", "limit": 5}]}
    assert client.put("/v1/subjects/user:ann/limits", json=seed).status_code == 200
    before = _state(client)
    answer = method(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"]["field"] == field
    assert _state(client) == before


def test_thresholds_over_http_are_answered_and_recorded(
    http: tuple[httpx.Client, Quota],
) -> None:
    client, quota = http
    rule = {"metric": "tokens", "window": "day", "limit": 100, "thresholds": [80, 50, 80]}
    answer = client.put("/v1/subjects/user:ann/limits", json={"limits": [rule]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["overrides"][0]["thresholds"] == [50, 80]
    assert body["effective"][0]["thresholds"] == [50, 80]
    plan = client.post("/v1/plans", json={"name": "pro", "rules": [rule]}).json()
    assert plan["rules"][0]["thresholds"] == [50, 80]
    defaults = client.put("/v1/defaults", json={"defaults": [{"kind": "team", **rule}]}).json()
    assert defaults["defaults"][0]["thresholds"] == [50, 80]
    consumed = client.post("/v1/consume", json={"subject": "user:ann", "amounts": {"tokens": 60}})
    assert consumed.status_code == 200, consumed.text
    assert crossings(quota) == [(50, 60)]


def test_periods_are_in_utc_microseconds(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:ann", "tokens", "day", 10, thresholds=[50])
    quota.consume("user:ann", tokens=5)
    now = clock.now()
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    assert [r[4] for r in recorded(quota)] == [to_micros(midnight)]


# the CLI ------------------------------------------------------------------------------
def test_the_cli_sets_and_shows_thresholds(tmp_path: Path, sqlite_template: Path) -> None:
    from typer.testing import CliRunner

    from tokenquota.cli.app import app

    db = migrated_sqlite(sqlite_template, tmp_path / "cli.db")

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--db", db], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    shown = run(
        "limits",
        "set",
        "user:ann",
        "tokens",
        "day",
        "100",
        "--threshold",
        "80",
        "--threshold",
        "50",
    )
    assert "50%, 80%" in shown
    assert "50%" in run("defaults", "set", "user", "tokens", "day", "9", "--threshold", "50")
    assert "90%, 100%" in run("plans", "create", "pro", "--rule", "tokens:day:10@100,90")
    with tokenquota_open(db) as quota:
        assert quota.limits("user:ann").overrides[0].thresholds == (50, 80)
        assert quota.get_plan("pro").rules[0].thresholds == (90, 100)
        quota.consume("user:ann", tokens=85)
        assert crossings(quota) == [(50, 85), (80, 85)]
    bad = CliRunner().invoke(
        app, ["limits", "set", "user:ann", "tokens", "day", "5", "--threshold", "0", "--db", db]
    )
    assert bad.exit_code != 0
    assert "thresholds[0]" in bad.output
    bad = CliRunner().invoke(app, ["plans", "create", "x", "--rule", "tokens:day:5@a", "--db", db])
    assert bad.exit_code != 0
    assert "rules[0].thresholds" in bad.output


def test_the_client_sets_and_reads_thresholds(http: tuple[httpx.Client, Quota]) -> None:
    from tokenquota.client import Client

    server, quota = http
    with Client(str(server.base_url), ADMIN, timeout=30) as client:
        view = client.set_limit("user:ann", "tokens", "day", 100, thresholds=[80, 50])
        assert view.overrides[0].thresholds == (50, 80)
        assert view.effective[0].thresholds == (50, 80)
        defaults = client.set_default("team", "tokens", "day", 10, thresholds=[100])
        assert [d.rule.thresholds for d in defaults] == [(100,)]
        plan = client.create_plan(
            "pro", [{"metric": "tokens", "window": "day", "limit": 5, "thresholds": [90]}]
        )
        assert plan.rules[0].thresholds == (90,)
        client.consume("user:ann", tokens=85)
    assert crossings(quota) == [(50, 85), (80, 85)]


def resets(quota: Quota) -> list[int | None]:
    """reset_at (µs) of every row, in id order."""
    store: Any = quota.store
    if isinstance(store, MemoryStore):
        return [
            None if e.reset_at is None else to_micros(e.reset_at)
            for e in store.meter._s.alert_events
        ]
    if isinstance(store, RedisStore):
        store.flush()
    a = t.alert_events.c
    with store.db.engine.connect() as conn:
        return list(conn.execute(sa.select(a.reset_at).order_by(a.id)).scalars())


@pytest.mark.parametrize("window", ["day", "rolling:1h", "total"])
def test_an_alert_resets_when_the_decision_says_usage_drops(
    quota: Quota, clock: FrozenClock, window: str
) -> None:
    quota.set_limit("user:ann", "tokens", window, 100, thresholds=[10, 50])
    quota.consume("user:ann", tokens=20)
    clock.advance(timedelta(minutes=5))  # the next consume lands in a later rolling bucket
    decision = quota.consume("user:ann", tokens=40)
    expected = decision.limits[0].reset_at
    # On a cluster the two consumes may take different ledger shards, whose alert
    # streams the mover copies one after the other: ids follow shards, not time.
    rows = sorted(zip(crossings(quota), resets(quota), strict=True))
    assert [c for c, _ in rows] == [(10, 20), (50, 60)]
    assert rows[1][1] == (None if expected is None else to_micros(expected))


def test_a_credits_threshold_crosses_at_the_exact_amount(quota: Quota) -> None:
    quota.set_limit("user:ann", "credits", "month", "0.3", thresholds=[100])
    quota.consume("user:ann", credits="0.2")
    assert crossings(quota) == []
    quota.consume("user:ann", credits="0.1")
    assert [th for th, _ in crossings(quota)] == [100]


def test_thresholds_from_the_config_files_defaults(make_quota: Any) -> None:
    rule = {"kind": "user", "metric": "tokens", "window": "day", "limit": 100}
    quota = make_quota(defaults=[{**rule, "thresholds": [50]}])
    assert [d.rule.thresholds for d in quota.defaults()] == [(50,)]
    quota.consume("user:bob", tokens=70)
    assert crossings(quota) == [(50, 70)]
    with pytest.raises(ValidationError) as bad:
        make_quota(defaults=[{**rule, "thresholds": [50, 5000]}])
    assert bad.value.details["field"] == "defaults[0].thresholds[1]"

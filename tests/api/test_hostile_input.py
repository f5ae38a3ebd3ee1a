"""Generated hostile input against every write route: a documented 4xx, and nothing changed.

Every POST, PUT, PATCH and DELETE the app's OpenAPI document lists (the native
/v1 API and the compatibility surfaces alike) is sent, on a live server over
SQLite and over PostgreSQL, a valid request with one or two of its leaves made
hostile (see tests/api/hostile.py for what that means), whole bodies that are
hostile, and hostile path and query parameters. For each:

- the status is a 4xx the route documents (413 for a body over the cap), never
  a 2xx and never a 5xx;
- the answer is JSON in the route's documented error shape for that status;
- the store is as it was: every row of every table (ledger, counters, holds,
  idempotency answers, audit log, subjects, rules, plans, keys, quotas);
- a plain request on the same connection still works.

Every kind of hostile value is first put once at every leaf of the body (a
sweep that does not depend on luck); then hypothesis combines them at random
places, derandomized and bounded (``TOKENQUOTA_FUZZ_EXAMPLES`` per route, 15 by
default); ``make fuzz`` runs many more.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr

from tests.api.conftest import ADMIN_KEY, LiveServer
from tests.api.hostile import (
    Attack,
    Route,
    Schemas,
    Snapshot,
    Tables,
    Target,
    body_attacks,
    path_attacks,
    query_attacks,
    resolve_example,
    sweep,
    whole_body_attacks,
    write_routes,
)
from tests.services import require_postgres
from tests.webhooks.outbox import alert, record
from tokenquota import FrozenClock, Quota
from tokenquota.api.app import create_app
from tokenquota.settings import Settings
from tokenquota.storage.webhooks import webhook_tables

pytestmark = pytest.mark.slow

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
EXAMPLES = int(os.environ.get("TOKENQUOTA_FUZZ_EXAMPLES", "15"))
USED = 1_200  # tokens already counted on alice and on the BokaMera company before every run

DEPLOYMENT = "65f1c0de0123456789abcdef"
WALDUR_USER = "2a6a1f9e-8c3b-4d5e-9f70-112233445566"
COMPANY_ID = "5b8f1c2e-3a4d-4e6f-8a9b-0c1d2e3f4a5b"

# A body each route accepts, by route; ``{name}`` is filled from the seeded store.
# A route missing here still runs, from a body built out of its schema.
EXAMPLES_BY_ROUTE: dict[str, dict[str, Any]] = {
    "POST /v1/check": {
        "subject": "user:alice",
        "amounts": {"input_tokens": 10, "output_tokens": 5},
        "timestamp": START.isoformat(),
        "resource": "deployment:{deployment}",
    },
    "POST /v1/consume": {
        "subject": "user:alice",
        "amounts": {"input_tokens": 10, "output_tokens": 5},
        "mode": "record",
        "idempotency_key": "req-1",
        "model": "gpt-4o",
        "tags": {"feature": "chat"},
    },
    "POST /v1/reservations": {
        "subject": "user:alice",
        "amounts": {"tokens": 100},
        "ttl": 60,
        "resource": "deployment:{deployment}",
    },
    "POST /v1/reservations/{reservation_id}/commit": {"amounts": {"tokens": 50}},
    "POST /v1/leases": {"subject": "user:alice", "ttl": 60},
    "POST /v1/leases/{lease_id}/heartbeat": {"ttl": 30},
    "PUT /v1/subjects/{ref}": {
        "name": "Alice",
        "parents": ["team:red", "company:acme"],
        "metadata": {"tier": "gold", "region": ["eu", "us"]},
    },
    "PUT /v1/subjects/{ref}/limits": {
        "limits": [{"metric": "tokens", "window": "day", "limit": 5_000, "shadow": False}]
    },
    "PUT /v1/subjects/{ref}/plan": {"plan_id": "{plan_id}"},
    "PUT /v1/defaults": {
        "defaults": [{"kind": "user", "metric": "tokens", "window": "day", "limit": 1_000}]
    },
    "POST /v1/plans": {
        "name": "Silver",
        "rules": [{"metric": "tokens", "window": "day", "limit": 100}],
    },
    "PUT /v1/plans/{plan_id}": {
        "name": "Gold",
        "rules": [{"metric": "requests", "window": "minute", "limit": 10}],
    },
    "POST /v1/keys": {"role": "member", "subject": "user:alice", "name": "ci"},
    "PUT /v1/resources/{ref}/quota": {
        "default_rules": [{"metric": "requests", "window": "minute", "limit": 2}],
        "policies": [
            {
                "consumer": "group:research",
                "reserved": 0.25,
                "rules": [{"metric": "tokens", "window": "day", "limit": 500}],
            }
        ],
        "capacity": {"value": 4, "units": "requests"},
        "saturation_threshold": 0.5,
    },
    "POST /v1/subjects/{ref}/grants": {"credits": 10, "expires_at": "2026-04-01T00:00:00Z"},
    "POST /v1/webhooks": {
        "url": "https://hooks.example.com/tokenquota",
        "events": ["threshold.crossed", "limit.denied"],
        "description": "ops",
        "secret": "a-receivers-own-secret-0123",
    },
    "PATCH /v1/webhooks/{endpoint_id}": {"enabled": False},
    "PUT /v1/webhooks/{endpoint_id}/secret": {"secret": "a-receivers-next-secret-0123"},
    "POST /api/chat-quota/set_quota/": {
        "user_uuid": WALDUR_USER,
        "daily_limit": 100,
        "weekly_limit": 500,
        "monthly_limit": 1_000,
    },
    "POST /assistant/ai-chat/usage": {
        "CompanyId": COMPANY_ID,
        "TokensUsed": 100,
        "WindowDays": 30,
    },
    "POST /api/v2/quotaTemplates/": {
        "name": "Bronze",
        "rules": [{"rule": "token", "window": "day", "limit": 100}],
    },
    "POST /api/v2/quotas/": {
        "resourceId": "75f1c0de0123456789abcdef",
        "resourceType": "deployment",
        "defaultRules": [{"rule": "requests", "window": "min", "limit": 2}],
        "policies": [
            {
                "consumerId": "bob",
                "consumerType": "user",
                "consumerName": "Bob",
                "reserved": 0.25,
                "rules": [{"rule": "token", "window": "hour", "limit": 10}],
            }
        ],
        "capacity": {"capacity": 4, "units": "requests"},
        "saturationThreshold": 0.5,
    },
    "PATCH /api/v2/quotas/{quotaId}/": {
        "capacity": {"capacity": 8, "units": "token"},
        "defaultRules": [{"rule": "token", "window": "day", "limit": 1_000}],
        "saturationThreshold": 0.75,
    },
}

# Number fields that are amounts charged to a counter already holding USED.
AMOUNTS: dict[str, list[tuple[str | int, ...]]] = {
    "POST /v1/consume": [("amounts", "input_tokens")],
    "POST /v1/reservations": [("amounts", "tokens")],
    "POST /v1/reservations/{reservation_id}/commit": [("amounts", "tokens")],
    "POST /assistant/ai-chat/usage": [("TokensUsed",)],
}

# Real path values, by parameter name.
PATH_VALUES = {
    "ref": "user:alice",
    "reservation_id": "{reservation_id}",
    "lease_id": "{lease_id}",
    "plan_id": "{plan_id}",
    "key_id": "{key_id}",
    "quotaId": "deployment:{deployment}",
    "endpoint_id": "{endpoint_id}",
    "delivery_id": "{delivery_id}",
}
RESOURCE_ROUTES = ("/v1/resources/",)


def _document() -> dict[str, Any]:
    settings_ = Settings(db="memory://", admin_key=SecretStr(ADMIN_KEY))
    return create_app(settings_).openapi()


DOCUMENT = _document()
# The gateway's routes forward to a model server, which these servers have none of:
# tests/gateway/test_hostile.py sends them hostile input with a test upstream behind.
ROUTES = [r for r in write_routes(DOCUMENT) if not r.path.startswith("/openai/")]


@dataclass
class Served:
    live: LiveServer
    tables: Tables
    ids: dict[str, str]

    @property
    def quota(self) -> Quota:
        quota: Quota = self.live.app.state.quota
        return quota

    def client(self) -> httpx.Client:
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return httpx.Client(base_url=self.live.url, headers=auth, timeout=60)


def serve(db: str) -> Served:
    # Webhooks on, their delivery worker off: nothing changes the store between snapshots.
    built = Settings(
        admin_key=SecretStr(ADMIN_KEY),
        db=db,
        webhook_key=SecretStr("hostile-input-webhook-key-0123456789"),
        webhook_poll_seconds=0,
    )
    live = LiveServer(create_app(built, clock=FrozenClock(START)))
    quota: Quota = live.app.state.quota
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        ids = seed(quota, c)
    return Served(live, Tables(db), ids)  # the tables after the server's migrations made them


class Servers:
    """One live server at a time per backend, shared by the routes' tests.

    Hostile requests must leave it as seeded, so the next route can use it as it
    is. When a test did change it (that test failed), the next one gets a fresh
    server, so one defect is reported once and not again by every later route.
    """

    def __init__(self, new_db: Callable[[], str]) -> None:
        self.new_db = new_db
        self.stack = ExitStack()
        self.current: Served | None = None
        self.seeded: Snapshot = {}

    def get(self) -> Served:
        if self.current is None or self.current.tables.snapshot() != self.seeded:
            self.stack.close()
            self.stack = ExitStack()
            self.current = self.stack.enter_context(served_on(self.new_db()))
            self.seeded = self.current.tables.snapshot()
        return self.current


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("hostile")
        pool = Servers(lambda: f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}")
        try:
            yield pool
        finally:
            pool.stack.close()
        return
    admin = sa.create_engine(require_postgres())
    schemas: list[str] = []

    def new_schema() -> str:
        schemas.append(f"tq_{uuid.uuid4().hex[:12]}")
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schemas[-1]}"'))
        return f"{require_postgres()}?options=-csearch_path%3D{schemas[-1]}"

    pool = Servers(new_schema)
    try:
        yield pool
    finally:
        pool.stack.close()
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def server(servers: Servers) -> Served:
    return servers.get()


@contextmanager
def served_on(db: str) -> Iterator[Served]:
    served = serve(db)
    try:
        yield served
    finally:
        served.tables.close()
        served.live.stop()


def seed(quota: Quota, client: httpx.Client) -> dict[str, str]:
    """A small store every route has something real to act on; the ids it made, by name."""
    quota.set_parents("user:alice", ["team:red", "company:acme"])
    quota.set_parents("team:red", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", 1_000_000)
    quota.consume("user:alice", {"tokens": USED}, mode="record")
    quota.set_parents(f"user:{COMPANY_ID[:8]}", [f"company:{COMPANY_ID}"])
    quota.consume(f"company:{COMPANY_ID}", {"tokens": USED}, mode="record")
    quota.put_subject(f"user:{WALDUR_USER}")
    quota.put_subject("user:ghost")
    plan = quota.create_plan("Gold", [{"metric": "tokens", "window": "day", "limit": 500}])
    key, _ = quota.create_key("service", name="seeded")
    created = client.post(
        "/api/v2/quotas/",
        json={
            "resourceId": DEPLOYMENT,
            "resourceType": "deployment",
            "defaultRules": [{"rule": "token", "window": "day", "limit": 100_000}],
            "capacity": {"capacity": 1_000_000, "units": "token"},
        },
    )
    assert created.status_code == 201, created.text
    reservation = quota.reserve("user:alice", {"tokens": 10}, ttl=3_600).reservation
    lease = quota.acquire("user:alice", ttl=3_600).lease
    assert reservation is not None
    assert lease is not None
    endpoint = client.post("/v1/webhooks", json={"url": "https://hooks.example.com/seeded"})
    assert endpoint.status_code == 201, endpoint.text
    event = record(quota, alert("user:alice"))
    tables = webhook_tables(quota.store)
    tables.fan_out([(event, endpoint.json()["id"])], [event], quota.clock.now())
    [delivery], _ = tables.deliveries(endpoint.json()["id"], offset=0, limit=1)
    return {
        "endpoint_id": endpoint.json()["id"],
        "delivery_id": str(delivery.id),
        "plan_id": plan.id,
        "key_id": key.id,
        "reservation_id": reservation.id,
        "lease_id": lease.id,
        "deployment": DEPLOYMENT,
    }


def target_for(route: Route, ids: dict[str, str], schemas: Schemas) -> Target:
    values = {name: resolve_example(PATH_VALUES.get(name, "x"), ids) for name in route.params}
    if route.path.startswith(RESOURCE_ROUTES):
        values["ref"] = f"deployment:{DEPLOYMENT}"
    schema = route.body_schema()
    body = None
    if schema is not None:
        template = EXAMPLES_BY_ROUTE.get(route.label)
        body = resolve_example(template, ids) if template is not None else schemas.example(schema)
    return Target(route, values, body, AMOUNTS.get(route.label, []))


def send(client: httpx.Client, route: Route, attack: Attack) -> httpx.Response:
    headers = {"Content-Type": "application/json"} if attack.body is not None else {}
    return client.request(route.method.upper(), attack.path, content=attack.body, headers=headers)


def judge(
    route: Route,
    attack: Attack,
    response: httpx.Response,
    schemas: Schemas,
    before: Snapshot,
    after: Snapshot,
) -> None:
    said = f"{route.label} with {attack.what}: {response.status_code} {response.text[:300]}"
    allowed = route.error_statuses() | {413}
    assert response.status_code in allowed, f"not a documented 4xx: {said}"
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        pytest.fail(f"the error is not JSON: {said}")
    shape = route.error_schema(response.status_code)
    assert shape is not None, f"no documented error shape for {said}"
    assert schemas.accepts(shape, body), f"not in the route's error shape: {said}"
    if response.status_code == 422 and "error" in body:
        # The native shape names the field at fault (the surfaces have their own ways).
        assert body["error"]["details"].get("field"), f"no field named: {said}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if response.status_code == 429 and "alert_events" in changed:
        # A refusal is recorded in the alert outbox, once per period (docs/alerts.md):
        # the one change a refused request makes, and only by adding denials.
        kept, now = set(before.get("alert_events", ())), set(after["alert_events"])
        assert kept <= now, f"alert events lost: {said}"
        assert all("'limit.denied'" in row for row in now - kept), f"not a denial: {said}"
        changed.remove("alert_events")
    assert not changed, f"changed {changed}: {said}"


RUN = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a live server's latency is not the property under test
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure names its input
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("route", ROUTES, ids=[r.label for r in ROUTES])
def test_hostile_input_is_refused_and_changes_nothing(server: Served, route: Route) -> None:
    schemas = Schemas(DOCUMENT)
    with server.client() as client:
        target = target_for(route, server.ids, schemas)

        def attempt(attack: Attack) -> None:
            before = server.tables.snapshot()
            response = send(client, route, attack)
            after = server.tables.snapshot()
            judge(route, attack, response, schemas, before, after)
            after_it = client.get("/healthz")
            assert after_it.status_code == 200, f"the next request failed after {attack.what}"

        fixed = path_attacks(target) + query_attacks(target, schemas)
        if target.body is not None:
            fixed += whole_body_attacks(target) + sweep(target, schemas)
        for attack in fixed:
            attempt(attack)

        if target.body is not None:

            @RUN
            @given(attack=body_attacks(target, schemas))
            def generated(attack: Attack) -> None:
                attempt(attack)

            generated()


@pytest.mark.parametrize("route", ROUTES, ids=[r.label for r in ROUTES])
def test_the_starting_bodies_are_accepted(tmp_path: Path, route: Route) -> None:
    """Each hostile body differs from one the route accepts, so its 4xx is the hostile part's.

    On a server of its own (these requests change things) and on SQLite only: the
    examples' validity does not depend on the backend.
    """
    with served_on(f"sqlite:///{tmp_path / 'valid.db'}") as served, served.client() as client:
        target = target_for(route, served.ids, Schemas(DOCUMENT))
        body = json.dumps(target.body).encode() if target.body is not None else None
        attack = Attack("the valid body", target.url(), body)
        response = send(client, route, attack)
        assert response.status_code < 300, f"{route.label}: {response.status_code} {response.text}"


def test_every_write_route_is_attacked() -> None:
    """The routes come from the document; these are the ones every build has."""
    labels = {r.label for r in ROUTES}
    assert {"POST /v1/consume", "PUT /v1/subjects/{ref}", "POST /assistant/ai-chat/usage"} <= labels

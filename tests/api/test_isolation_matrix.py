"""The isolation matrix, generated from the app's route table (contract §7 and §10).

Every route the app serves, native and compatibility, is called by every role
(admin, staff, service, member) on every relation to the member's subject: its
own subject, a descendant, an ancestor, a sibling and another tenant's subject.
Nothing is hand-listed: path and query parameters and the fields of a request
body are filled from ``FILL``, a table keyed by parameter name. A route that
brings a parameter name the table does not know fails the test, asking for an
entry; any other new route is covered as it is.

What is asserted:

- no call answers 5xx, and no valid key is answered 401;
- an admin key is never refused (403);
- a member calling about its ancestor, sibling or another tenant is refused
  (403 or 404), never answered with data;
- no answer to a member, body or header, names a subject outside its subtree,
  other than what the member itself sent in that request (an error may repeat
  the member's own input, which tells it nothing).

One exception, by design: BokaMera's API is company-level (contract §8:
CompanyId defaults to the caller's company, its nearest ancestor of kind
company), so a member bound below a company sees that company there; see
docs/api.md ("What a member key sees").

Each role gets a tree of its own, so an admin deleting a subject or a key does
not change what the other roles are tested against; within a role, deletions
run last. One live server per backend serves the whole module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import SecretStr

from tests.api.conftest import ADMIN_KEY, Api, LiveServer
from tests.webhooks.outbox import alert, record
from tokenquota.api.app import create_app
from tokenquota.engine.webhooks import ServerKey, Webhooks
from tokenquota.settings import Settings

ROLES = ("member", "service", "staff", "admin")
RELATIONS = ("own", "descendant", "ancestor", "sibling", "foreign")
OUTSIDE = frozenset({"ancestor", "sibling", "foreign"})
# BokaMera answers for the caller's company (contract §8), an ancestor of the member.
COMPANY_LEVEL = frozenset({"/assistant/ai-chat/usage"})
RULE = {"metric": "tokens", "window": "day", "limit": 50}
OMIT = object()  # a parameter the matrix leaves out
WEBHOOK_KEY = "isolation-matrix-webhook-key-0123456789"


@dataclass
class Tree:
    """One role's world: company -> workspace (the member's) -> user, a sibling, a tenant."""

    ids: dict[str, str]  # relation -> uuid
    plan: str = ""
    spare_key: str = ""
    reservations: dict[str, str] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)
    webhooks: dict[str, str] = field(default_factory=dict)  # relation -> its own endpoint
    deliveries: dict[str, str] = field(default_factory=dict)  # relation -> a delivery to it

    KINDS: ClassVar[dict[str, str]] = {
        "own": "workspace",
        "descendant": "user",
        "ancestor": "company",
        "sibling": "workspace",
        "foreign": "workspace",
        "tenant": "company",
    }

    def ref(self, relation: str) -> str:
        return f"{self.KINDS[relation]}:{self.ids[relation]}"


@dataclass
class Call:
    """What one (route, role, relation) sends, and whether it names the relation's subject."""

    path: str
    params: dict[str, Any]
    body: dict[str, Any] | None
    targeted: bool


Filler = Callable[["Ctx"], Any]


@dataclass
class Ctx:
    tree: Tree
    relation: str
    route: str
    targeted: bool = False

    def target(self, value: str) -> str:
        self.targeted = True
        return value

    @property
    def ref(self) -> str:
        return self.target(self.tree.ref(self.relation))

    @property
    def uuid(self) -> str:
        return self.target(self.tree.ids[self.relation])


def _rules(ctx: Ctx) -> list[dict[str, Any]]:
    if ctx.route.startswith("/api/v2/"):  # DataRobot's rule shape
        return [{"limit": 50, "rule": "token", "window": "day"}]
    return [RULE]


# Every parameter and body field name any route uses; a new name needs an entry here.
FILL: dict[str, Filler | object] = {
    # path
    "ref": lambda c: c.ref,
    "reservation_id": lambda c: c.target(c.tree.reservations[c.relation]),
    "lease_id": lambda c: c.target(c.tree.leases[c.relation]),
    "plan_id": lambda c: c.tree.plan,
    "key_id": lambda c: c.tree.spare_key,
    "endpoint_id": lambda c: c.target(c.tree.webhooks[c.relation]),
    "delivery_id": lambda c: c.target(c.tree.deliveries[c.relation]),
    "quotaTemplateId": lambda c: uuid.uuid4().hex[:24],
    "quotaId": lambda c: uuid.uuid4().hex[:24],
    # query
    "subject": lambda c: c.ref,
    "parent": lambda c: c.ref,
    "user_uuid": lambda c: c.uuid,
    "CompanyId": lambda c: c.uuid,
    "include_ancestors": lambda c: "true",
    "offset": lambda c: 0,
    "limit": lambda c: 10,
    "kind": OMIT,
    "start": OMIT,
    "end": OMIT,
    "granularity": OMIT,
    "group_by": OMIT,
    "format": OMIT,
    "WindowDays": OMIT,
    "metric": lambda c: "tokens",
    "window": OMIT,
    "resourceId": lambda c: f"d{uuid.uuid4().hex[:12]}",
    "resourceType": lambda c: "deployment",
    # body fields (top level)
    "amounts": lambda c: {"tokens": 1},
    "timestamp": OMIT,
    "resource": OMIT,
    "mode": OMIT,
    "idempotency_key": OMIT,
    "model": OMIT,
    "tags": OMIT,
    "ttl": OMIT,
    "name": lambda c: f"n{uuid.uuid4().hex[:12]}",
    "parents": OMIT,
    "metadata": OMIT,
    "limits": lambda c: [RULE],
    "defaults": lambda c: [{**RULE, "kind": "matrixkind"}],
    "rules": _rules,
    "role": lambda c: "member",
    "default_rules": OMIT,
    "defaultRules": OMIT,
    "policies": OMIT,
    "capacity": OMIT,
    "saturation_threshold": OMIT,
    "saturationThreshold": OMIT,
    "credits": lambda c: "5",
    "expires_at": OMIT,
    "daily_limit": OMIT,
    "weekly_limit": OMIT,
    "monthly_limit": OMIT,
    "TokensUsed": lambda c: 1,
    "url": lambda c: "http://127.0.0.1:9/hook",
    "events": OMIT,
    "description": OMIT,
    "secret": OMIT,
    "enabled": lambda c: True,
}
# A body field named like a query parameter may mean something else there.
BODY_FILL: dict[str, Filler | object] = {"CompanyId": OMIT, "WindowDays": OMIT, "subject": None}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_fields: tuple[str, ...] | None  # None: no body

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def routes_of(app: FastAPI) -> list[Route]:
    """Every route and method the app serves, with its parameter and body field names."""
    spec = app.openapi()
    found: list[Route] = []
    # FastAPI keeps included routers as such in app.routes; this walks into them.
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        full_path = context.path or route.path
        dependant = route.dependant
        path_params = tuple(p.alias for p in _flat(dependant, "path_params"))
        query_params = tuple(p.alias for p in _flat(dependant, "query_params"))
        for method in sorted(route.methods or ()):
            op = spec["paths"].get(full_path, {}).get(method.lower())
            found.append(
                Route(method, full_path, path_params, query_params, _body_fields(spec, op, route))
            )
    return found


def _flat(dependant: Any, kind: str) -> list[Any]:
    out = list(getattr(dependant, kind))
    for sub in dependant.dependencies:
        out += _flat(sub, kind)
    return out


def _body_fields(spec: dict[str, Any], op: dict[str, Any] | None, route: APIRoute) -> Any:
    if route.body_field is None:
        return None
    schema: dict[str, Any] | None = None
    if op is not None:
        content = op.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
    if schema is None:
        raise AssertionError(f"{route.path}: a body without an OpenAPI schema")
    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
    ref = next(r for r in refs if r)
    component = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return tuple(component.get("properties", {}))


def fill(route: Route, tree: Tree, relation: str) -> Call:
    ctx = Ctx(tree, relation, route.path)

    def value(name: str, table: dict[str, Filler | object]) -> Any:
        if name not in table and name not in FILL:
            raise AssertionError(
                f"{route.id}: parameter {name!r} is new to the isolation matrix; add it to "
                "FILL in tests/api/test_isolation_matrix.py (a value, or OMIT)"
            )
        filler = table.get(name, FILL.get(name))
        if filler is None:
            filler = FILL[name]
        if filler is OMIT:
            return OMIT
        assert callable(filler)
        return filler(ctx)

    path = route.path
    for name in route.path_params:
        path = path.replace("{" + name + "}", str(value(name, FILL)))
    params = {n: v for n in route.query_params if (v := value(n, FILL)) is not OMIT}
    body = None
    if route.body_fields is not None:
        body = {n: v for n in route.body_fields if (v := value(n, BODY_FILL)) is not OMIT}
    return Call(path, params, body, ctx.targeted)


# the world -----------------------------------------------------------------------------
@dataclass
class World:
    api: Api
    client: httpx.Client
    trees: dict[str, Tree]
    secrets: dict[str, str]
    routes: list[Route]

    def outside(self) -> set[str]:
        """Every subject id a member must not see: all but its own and its descendant."""
        member = self.trees["member"]
        inside = {member.ids["own"], member.ids["descendant"]}
        every = {i for tree in self.trees.values() for i in tree.ids.values()}
        return every - inside


def build_tree(api: Api) -> Tree:
    q = api.quota
    tree = Tree({r: str(uuid.uuid4()) for r in (*RELATIONS, "tenant")})
    q.set_parents(tree.ref("own"), [tree.ref("ancestor")])
    q.set_parents(tree.ref("sibling"), [tree.ref("ancestor")])
    q.set_parents(tree.ref("descendant"), [tree.ref("own")])
    q.set_parents(tree.ref("foreign"), [tree.ref("tenant")])
    for relation in RELATIONS:
        ref = tree.ref(relation)
        q.set_limit(ref, "tokens", "day", 100)
        q.consume(ref, {"tokens": 1}, mode="record")
        tree.reservations[relation] = q.reserve(ref, {"requests": 1}, ttl=3600).reservation.id  # type: ignore[union-attr]
        tree.leases[relation] = q.acquire(ref, ttl=3600).lease.id  # type: ignore[union-attr]
    # The ancestor's budget is spent, so the member's own spending is refused by it.
    q.set_limit(tree.ref("ancestor"), "tokens", "day", 3)
    q.consume(tree.ref("sibling"), {"tokens": 1}, mode="record")
    tree.plan = q.create_plan(f"p{uuid.uuid4().hex[:10]}", [RULE]).id
    tree.spare_key = q.create_key("service")[0].id
    # Each relation's subject owns an endpoint, with one delivery of an event of its own,
    # as if a member key bound to it had registered it (docs/webhooks.md).
    webhooks = Webhooks(q, ServerKey(WEBHOOK_KEY))
    now = q.clock.now()
    for relation in RELATIONS:
        endpoint, _ = webhooks.create("http://127.0.0.1:9/hook", owner=tree.ref(relation))
        event = record(q, alert(tree.ref(relation)))
        webhooks.tables.fan_out([(event, endpoint.id)], [event], now)
        [delivery], _ = webhooks.tables.deliveries(endpoint.id, offset=0, limit=1)
        tree.webhooks[relation] = endpoint.id
        tree.deliveries[relation] = str(delivery.id)
    return tree


@contextmanager
def store_for(backend: str, tmp: Path) -> Iterator[dict[str, Any]]:
    """Settings for a fresh store on ``backend``, dropped afterwards."""
    if backend == "sqlite":
        yield {"db": f"sqlite:///{tmp / 'matrix.db'}"}
        return
    import sqlalchemy as sa

    from tests.services import fresh_redis_prefix, require_postgres

    base = require_postgres()
    schema = f"tq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        settings: dict[str, Any] = {"db": f"{base}?options=-csearch_path%3D{schema}"}
        if backend == "redis":
            with contextmanager(fresh_redis_prefix)() as redis:
                yield {**settings, "redis": redis}
        else:
            yield settings
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres", "redis"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with ExitStack() as stack:
        store = stack.enter_context(store_for(request.param, tmp_path_factory.mktemp("matrix")))
        # Webhooks on, their delivery worker off: the matrix's endpoints receive nothing.
        settings = Settings(
            admin_key=SecretStr(ADMIN_KEY),
            webhook_key=SecretStr(WEBHOOK_KEY),
            webhook_poll_seconds=0,
            **store,
        )
        server = LiveServer(create_app(settings))
        stack.callback(server.stop)
        api = Api(server.url, server.app.state.quota, None)
        trees = {role: build_tree(api) for role in ROLES}
        secrets = {
            role: api.key(role, trees[role].ref("own") if role == "member" else None)
            for role in ROLES
        }
        client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        yield World(api, client, trees, secrets, routes_of(server.app))


# the test ------------------------------------------------------------------------------
def test_every_route_every_role_every_relation(world: World) -> None:
    failures: list[str] = []
    forbidden = world.outside()
    member_tree = world.trees["member"]
    company = member_tree.ids["ancestor"]
    # Deletions last, so that the other calls find what they name.
    ordered = sorted(world.routes, key=lambda r: r.method == "DELETE")
    calls = 0
    for role in ROLES:
        tree = world.trees[role]
        for route in ordered:
            for relation in RELATIONS:
                call = fill(route, tree, relation)
                if not call.targeted and relation != "own":
                    continue  # the relation does not reach this route: once is enough
                response = world.client.request(
                    route.method,
                    call.path,
                    params=call.params,
                    json=call.body,
                    headers={"Authorization": f"Bearer {world.secrets[role]}"},
                )
                calls += 1
                where = f"{role} {relation} {route.method} {call.path} {call.params}"
                status = response.status_code
                if status >= 500 or status == 401:
                    failures.append(f"{where}: {status} {response.text[:200]}")
                if role == "admin" and status == 403 and call.targeted:
                    failures.append(f"{where}: admin refused: {response.text[:200]}")
                if role != "member":
                    continue
                outside = call.targeted and relation in OUTSIDE
                if outside and route.path not in COMPANY_LEVEL and status not in (403, 404):
                    failures.append(f"{where}: member answered {status} outside its subtree")
                sent = call.path + repr(call.params) + repr(call.body)
                allowed = {company} if route.path in COMPANY_LEVEL else set()
                text = (
                    response.text
                    + "\n"
                    + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
                )
                named = {i for i in forbidden - allowed if i in text and i not in sent}
                if named:
                    failures.append(f"{where}: names {sorted(named)}: {response.text[:300]}")
    assert calls > 4 * len(world.routes), "the matrix made fewer calls than it should"
    assert not failures, "\n".join(failures)


def test_a_new_parameter_name_fails_loudly() -> None:
    route = Route("GET", "/v1/new/{brand_new}", ("brand_new",), (), None)
    tree = Tree({r: str(uuid.uuid4()) for r in (*RELATIONS, "tenant")})
    with pytest.raises(AssertionError, match=r"brand_new.*add it to FILL"):
        fill(route, tree, "own")

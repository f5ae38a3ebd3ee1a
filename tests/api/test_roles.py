"""The role matrix (contract §7): every endpoint x role x a subject inside or outside
the member's scope, over real HTTP.

One server serves the whole module (a few hundred cases); before each case the
world is put back through the engine, and a refused call must leave it as it was.

The member key is bound to ``company:a``; "own" targets ``user:a1`` (a child of
``company:a``), "foreign" targets ``user:b1`` (a child of ``company:b``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.api.conftest import ADMIN_KEY, Api, LiveServer
from tokenquota import Quota
from tokenquota.api.app import create_app
from tokenquota.settings import Settings

ROLES = ("admin", "staff", "service", "member")
SCOPES = ("own", "foreign")
TARGET = {"own": "user:a1", "foreign": "user:b1"}
PARENT = {"own": "company:a", "foreign": "company:b"}
MEMBER_SUBJECT = "company:a"

ALL = frozenset(ROLES)  # the member only within its scope
READERS = frozenset({"admin", "staff", "service"})
WRITERS = frozenset({"admin", "staff"})
ADMIN = frozenset({"admin"})
RULE = {"metric": "tokens", "window": "day", "limit": 5}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    roles: frozenset[str]
    ok: int = 200
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


CASES = [
    Case("PUT", "/v1/subjects/{ref}", WRITERS, body={"name": "N"}),
    Case("GET", "/v1/subjects/{ref}", ALL),
    Case("DELETE", "/v1/subjects/{ref}", WRITERS, ok=204),
    Case("GET", "/v1/subjects", READERS, params={"parent": "{parent}"}),
    Case("PUT", "/v1/subjects/{ref}/limits", WRITERS, body={"limits": [RULE]}),
    Case("GET", "/v1/subjects/{ref}/limits", ALL),
    Case("PUT", "/v1/subjects/{ref}/plan", WRITERS, body={"plan_id": "{plan}"}),
    Case("DELETE", "/v1/subjects/{ref}/plan", WRITERS),
    Case("GET", "/v1/subjects/{ref}/usage", ALL),
    Case("GET", "/v1/subjects/{ref}/usage", ALL, params={"include_ancestors": "true"}),
    Case("GET", "/v1/subjects/{ref}/history", ALL),
    Case("GET", "/v1/events", ALL, params={"subject": "{ref}"}),
    Case("GET", "/v1/events", ALL, params={"subject": "{ref}", "format": "csv"}),
    Case("GET", "/v1/events", READERS),
    Case("GET", "/v1/events", READERS, params={"format": "jsonl"}),
    Case("GET", "/v1/defaults", READERS),
    Case("PUT", "/v1/defaults", ADMIN, body={"defaults": [{**RULE, "kind": "user"}]}),
    Case("GET", "/v1/plans", READERS),
    Case("POST", "/v1/plans", WRITERS, ok=201, body={"name": "{fresh}", "rules": [RULE]}),
    Case("GET", "/v1/plans/{plan}", READERS),
    Case("PUT", "/v1/plans/{plan}", WRITERS, body={"rules": [RULE]}),
    Case("DELETE", "/v1/plans/{spare_plan}", WRITERS, ok=204),
    Case("POST", "/v1/keys", ADMIN, ok=201, body={"role": "member", "subject": "{ref}"}),
    Case("GET", "/v1/keys", ADMIN),
    Case("DELETE", "/v1/keys/{spare_key}", ADMIN, ok=204),
    Case("GET", "/v1/audit", WRITERS, params={"subject": "{ref}"}),
]


def expected(case: Case, role: str, scope: str) -> int:
    if role not in case.roles:
        return 403
    if role == "member" and scope != "own":
        return 403
    return case.ok


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    params: dict[str, Any]
    body: dict[str, Any] | None

    def send(self, client: httpx.Client, secret: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return client.request(
            self.method, self.url, params=self.params, json=self.body, headers=headers
        )


@dataclass
class World:
    api: Api
    secrets: dict[str, str]
    client: httpx.Client  # one connection pool: a client per request costs ~30 ms

    @property
    def quota(self) -> Quota:
        return self.api.quota

    def reset(self) -> None:
        """The subjects and plan every case starts from; idempotent."""
        self.quota.put_subject("company:a")
        self.quota.put_subject("company:b")
        self.quota.put_subject("user:a1", parents=["company:a"])
        self.quota.put_subject("user:b1", parents=["company:b"])

    def plan_id(self) -> str:
        found = next((p for p in self.quota.plans() if p.name == "Gold"), None)
        if found is None:
            found = self.quota.create_plan("Gold", [RULE])
        return found.id

    def fill(self, value: Any, scope: str) -> Any:
        """Replace the {placeholders} in a path, a query or a body; spares are made on demand."""
        if isinstance(value, dict):
            return {k: self.fill(v, scope) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v, scope) for v in value]
        if not isinstance(value, str) or "{" not in value:
            return value
        names: dict[str, str] = {"ref": TARGET[scope], "parent": PARENT[scope]}
        if "{plan}" in value:
            names["plan"] = self.plan_id()
        if "{spare_plan}" in value:
            names["spare_plan"] = self.quota.create_plan(f"spare-{uuid.uuid4().hex}", []).id
        if "{spare_key}" in value:
            names["spare_key"] = self.quota.create_key("service")[0].id
        if "{fresh}" in value:
            names["fresh"] = f"new-{uuid.uuid4().hex}"
        return value.format(**names)

    def request(self, case: Case, scope: str) -> Request:
        return Request(
            case.method,
            f"{self.api.url}{self.fill(case.path, scope)}",
            self.fill(case.params, scope),
            self.fill(case.body, scope),
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused call could have changed."""
        q = self.quota
        return (
            q.list_subjects(limit=1000),
            [q.limits(ref) for ref in (*TARGET.values(), *PARENT.values())],
            q.plans(),
            q.defaults(),
            q.list_keys(limit=1000),
            q.audit(limit=1).total,
            q.events(limit=1).total,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = Path(tmp_path_factory.mktemp("roles")) / "roles.db"
    settings = Settings(admin_key=SecretStr(ADMIN_KEY), db=f"sqlite:///{db}")
    server = LiveServer(create_app(settings))
    api = Api(server.url, server.app.state.quota, None)
    secrets = {role: api.key(role, MEMBER_SUBJECT if role == "member" else None) for role in ROLES}
    with httpx.Client(timeout=30) as client:
        world = World(api, secrets, client)
        world.reset()
        world.quota.consume("user:a1", tokens=3)
        world.quota.consume("user:b1", tokens=4)
        yield world
    server.stop()


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_role_matrix(world: World, case: Case, role: str, scope: str) -> None:
    world.reset()
    want = expected(case, role, scope)
    request = world.request(case, scope)
    before = world.snapshot() if want == 403 else None
    response = request.send(world.client, world.secrets[role])
    assert response.status_code == want, response.text
    if want == 403:
        assert response.json()["error"]["code"] == "forbidden"
        assert world.snapshot() == before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_no_valid_key_is_401_and_changes_nothing(world: World, case: Case) -> None:
    world.reset()
    revoked_key, revoked = world.quota.create_key("admin")
    world.quota.revoke_key(revoked_key.id)
    request = world.request(case, "own")
    before = world.snapshot()
    for secret in (None, "tq_0123456789abcdef_" + "x" * 43, revoked, ADMIN_KEY + "x"):
        response = request.send(world.client, secret)
        assert response.status_code == 401, (secret, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert world.snapshot() == before


READS = [
    "/v1/subjects/{ref}",
    "/v1/subjects/{ref}/limits",
    "/v1/subjects/{ref}/usage",
    "/v1/subjects/{ref}/history",
    "/v1/events?subject={ref}",
    "/v1/events?subject={ref}&format=jsonl",
]


def _read_all(world: World, secret: str, ref: str) -> list[int]:
    headers = {"Authorization": f"Bearer {secret}"}
    return [
        world.client.get(f"{world.api.url}{path.format(ref=ref)}", headers=headers).status_code
        for path in READS
    ]


def test_a_company_member_reads_its_company_and_users_but_nothing_of_another(
    world: World,
) -> None:
    world.reset()
    world.quota.put_subject("user:a3", parents=["team:a3"])
    world.quota.put_subject("team:a3", parents=["company:a"])  # a grandchild of company:a
    world.quota.put_subject("user:b3", parents=["team:b3"])
    world.quota.put_subject("team:b3", parents=["company:b"])
    secret = world.secrets["member"]  # bound to company:a
    for ref in ("company:a", "user:a1", "team:a3", "user:a3"):
        assert _read_all(world, secret, ref) == [200] * len(READS), ref
    for ref in ("company:b", "user:b1", "team:b3", "user:b3", "user:nobody"):
        assert _read_all(world, secret, ref) == [403] * len(READS), ref


def test_a_user_member_cannot_read_its_company(world: World) -> None:
    world.reset()
    world.quota.put_subject("user:a1-bot", parents=["user:a1"])
    secret = world.api.key("member", "user:a1")
    assert _read_all(world, secret, "user:a1") == [200] * len(READS)
    assert _read_all(world, secret, "user:a1-bot") == [200] * len(READS)
    for ref in ("company:a", "company:b", "user:b1"):
        assert _read_all(world, secret, ref) == [403] * len(READS), ref
    # Its own usage with ancestors shows nothing above user:a1.
    world.quota.set_limit("company:a", "tokens", "day", 100)
    world.quota.set_limit("user:a1", "tokens", "day", 10)
    world.quota.delete_subject("user:a1-bot")
    body = world.client.get(
        f"{world.api.url}/v1/subjects/user:a1/usage",
        params={"include_ancestors": "true"},
        headers={"Authorization": f"Bearer {secret}"},
    ).json()
    assert [s["subject"] for s in body["limits"]] == ["user:a1"]

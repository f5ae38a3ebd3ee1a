"""A subject's alerts from the Python clients and ``tokenquota alerts``, against a served app.

The app serves a real SQLite file over real HTTP and delivers to a real
receiver; the clients read ``GET /v1/subjects/{ref}/alerts`` from it, and the
command reads the same file as ``serve`` would open it. All three must tell the
same story, each key seeing what its role may.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tests.conftest import migrated_sqlite
from tests.test_cli import invoke
from tests.webhooks.conftest import FAST
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_subject_alerts import WAIT_SECONDS, cross_all
from tokenquota import AsyncClient, Client
from tokenquota.domain.alerts import AlertKind
from tokenquota.domain.errors import Forbidden, ValidationError
from tokenquota.domain.webhooks import DeliveryStatus, SubjectAlert


@pytest.fixture
def served(make_api: ServerFactory, sqlite_template: Path, tmp_path: Path) -> tuple[Api, str, str]:
    """The app on a SQLite file, user:ada's four alerts each delivered to a staff endpoint
    and to ada's own; returns the app, the file's URL and ada's member key."""
    db = migrated_sqlite(sqlite_template, tmp_path / "alerts.db")
    api = make_api(db=db, **FAST)
    receiver = Receiver()
    try:
        with api.client() as admin:
            assert admin.post("/v1/webhooks", json={"url": receiver.url}).status_code == 201
        ada = api.key("member", "user:ada")
        with api.client(ada) as member:
            assert member.post("/v1/webhooks", json={"url": receiver.url}).status_code == 201
        cross_all(api, "user:ada")
        receiver.wait_for(8, WAIT_SECONDS)
        with api.client() as admin:
            deadline = time.monotonic() + WAIT_SECONDS
            while not _all_delivered(admin.get("/v1/subjects/user:ada/alerts").json()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        receiver.close()
    return api, db, ada


def _all_delivered(page: dict[str, Any]) -> bool:
    return page["total"] == 4 and all(
        [d["status"] for d in a["deliveries"]] == ["delivered"] * 2 for a in page["items"]
    )


def _story(items: list[SubjectAlert]) -> list[tuple[str, int | None, object, object]]:
    return sorted(
        ((a.type.value, a.threshold, a.used, a.limit) for a in items), key=lambda t: t[1] or 0
    )


EXPECTED = [
    ("limit.denied", None, 100, 100),
    ("threshold.crossed", 50, 50, 100),
    ("threshold.crossed", 80, 100, 100),
    ("threshold.crossed", 100, 100, 100),
]


def test_the_blocking_client_reads_alerts_as_each_key_may(served: tuple[Api, str, str]) -> None:
    api, _, ada = served
    with api.client() as admin:
        raw = admin.get("/v1/subjects/user:ada/alerts").json()
    with Client(api.url, ADMIN_KEY, timeout=30) as client:
        page = client.alerts("user:ada")
        assert (page.total, page.offset, page.limit) == (4, 0, 100)
        assert [a.id for a in page.items] == [a["id"] for a in raw["items"]]  # newest first
        assert _story(page.items) == EXPECTED
        for alert, wire in zip(page.items, raw["items"], strict=True):
            assert alert.subject == "user:ada"
            assert (alert.metric, alert.window) == ("tokens", "day")
            assert alert.created_at.isoformat() == wire["created_at"]
            assert alert.period_start is not None
            assert alert.period_start.isoformat() == wire["data"]["period_start"]
            assert [d.id for d in alert.deliveries] == [d["id"] for d in wire["deliveries"]]
            assert {d.status for d in alert.deliveries} == {DeliveryStatus.DELIVERED}
        paged = client.alerts("user:ada", offset=1, limit=2)
        assert [a.id for a in paged.items] == [a.id for a in page.items[1:3]]
        assert paged.total == 4
        assert client.alerts("user:nobody").items == []
        with pytest.raises(ValidationError):
            client.alerts("user:ada", limit=0)
        with pytest.raises(ValidationError):
            client.alerts("not a subject")
    with Client(api.url, ada, timeout=30) as member:
        own = member.alerts("user:ada")
        assert _story(own.items) == EXPECTED
        # Only the deliveries to its own endpoint, never the staff one's.
        assert [len(a.deliveries) for a in own.items] == [1, 1, 1, 1]
        with pytest.raises(Forbidden):
            member.alerts("user:bob")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_client_reads_the_same(served: tuple[Api, str, str]) -> None:
    api, _, _ = served
    async with AsyncClient(api.url, ADMIN_KEY, timeout=30) as client:
        page = await client.alerts("user:ada", limit=3)
        assert page.total == 4
        assert len(page.items) == 3
        rest = await client.alerts("user:ada", offset=3)
        assert _story([*page.items, *rest.items]) == EXPECTED
        assert all(len(a.deliveries) == 2 for a in page.items)


def test_credits_come_back_as_decimals(make_api: ServerFactory) -> None:
    api = make_api(**FAST)
    rule = {"metric": "credits", "window": "day", "limit": "0.5", "thresholds": [50]}
    with api.client() as admin:
        assert admin.put("/v1/subjects/user:cy/limits", json={"limits": [rule]}).is_success
        spent = admin.post(
            "/v1/consume", json={"subject": "user:cy", "amounts": {"credits": "0.3"}}
        )
        assert spent.status_code == 200, spent.text
    with Client(api.url, ADMIN_KEY, timeout=30) as client:
        [alert] = client.alerts("user:cy").items
    assert alert.type is AlertKind.THRESHOLD
    assert (alert.used, alert.limit) == (Decimal("0.3"), Decimal("0.5"))
    assert alert.deliveries == ()


def _cli(db: str, *args: str) -> tuple[int, str]:
    result = invoke("alerts", *args, env={"TOKENQUOTA_DB": db})
    return result.exit_code, result.output


def test_the_command_shows_the_same_alerts(served: tuple[Api, str, str]) -> None:
    api, db, _ = served
    with httpx.Client(base_url=api.url, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as admin:
        raw = admin.get("/v1/subjects/user:ada/alerts").json()
        paged = admin.get("/v1/subjects/user:ada/alerts", params={"offset": 1, "limit": 2}).json()
    code, out = _cli(db, "user:ada", "--json")
    assert code == 0, out
    assert json.loads(out) == raw  # the operator's view: every delivery, as an admin key's
    code, out = _cli(db, "user:ada", "--json", "--offset", "1", "--limit", "2")
    assert code == 0, out
    assert json.loads(out) == paged
    code, out = _cli(db, "user:ada")
    assert code == 0, out
    for text in ("threshold.crossed", "limit.denied", "50%", "80%", "100%", "2 delivered"):
        assert text in out, out
    assert "4 of 4 alerts shown (offset 0)" in out
    code, out = _cli(db, "user:ada", "--offset", "3")
    assert "1 of 4 alerts shown (offset 3)" in out
    code, out = _cli(db, "user:nobody")
    assert code == 0, out
    assert "0 of 0 alerts shown" in out
    code, out = _cli(db, "user ada")
    assert code != 0
    assert "subject" in out
    code, out = _cli(db, "user:ada", "--limit", "0")
    assert code != 0
    assert "limit" in out

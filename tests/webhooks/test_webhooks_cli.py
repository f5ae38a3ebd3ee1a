"""``tokenquota webhooks``: real commands on a real SQLite file, a real receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tokenquota
from tests.conftest import migrated_sqlite
from tests.test_cli import invoke
from tests.webhooks.conftest import WEBHOOK_KEY
from tests.webhooks.outbox import alert, insert_url
from tests.webhooks.receiver import Receiver
from tokenquota.client import verify_webhook
from tokenquota.engine.delivery import Deliverer, DeliveryOptions
from tokenquota.engine.webhooks import ServerKey


@pytest.fixture
def db(sqlite_template: Path, tmp_path: Path) -> str:
    return migrated_sqlite(sqlite_template, tmp_path / "cli.db")


def run(db: str, *args: str, key: str | None = WEBHOOK_KEY) -> tuple[int, str]:
    result = invoke("webhooks", *args, env={"TOKENQUOTA_DB": db, "TOKENQUOTA_WEBHOOK_KEY": key})
    return result.exit_code, result.output


def test_the_commands_manage_endpoints_and_deliveries(db: str) -> None:
    receiver = Receiver()
    try:
        code, out = run(db, "add", receiver.url, "--event", "threshold.crossed", "--json")
        assert code == 0, out
        made = json.loads(out)
        assert made["events"] == ["threshold.crossed"]
        code, out = run(db, "list")
        assert code == 0, out
        assert made["id"] in out, out
        code, out = run(db, "show", made["id"], "--secret")
        assert json.loads(out)["secret"] == made["secret"]
        assert run(db, "disable", made["id"])[0] == 0
        assert json.loads(run(db, "show", made["id"])[1])["enabled"] is False
        assert run(db, "enable", made["id"])[0] == 0
        # The service's worker, in this process, over the same file.
        event_id = insert_url(db, alert())
        quota = tokenquota.open(db)
        try:
            worker = Deliverer(quota, ServerKey(WEBHOOK_KEY), DeliveryOptions(timeout=5))
            try:
                assert worker.run_once()
            finally:
                worker.close()
        finally:
            quota.close()
        [got] = receiver.received()
        verify_webhook(made["secret"], got.body, got.header("TokenQuota-Signature"))
        code, out = run(db, "deliveries", made["id"], "--json")
        [delivery] = json.loads(out)["items"]
        assert delivery["event_id"] == event_id
        assert delivery["status"] == "delivered"
        code, out = run(db, "deliveries", made["id"])
        assert code == 0, out
        assert "delivered" in out, out
        code, out = run(db, "redeliver", str(delivery["id"]))
        assert code == 0, out
        again = json.loads(run(db, "deliveries", made["id"], "--json")[1])["items"][0]
        assert again["status"] == "pending"
        assert run(db, "remove", made["id"])[0] == 0
        assert json.loads(run(db, "list", "--json")[1]) == {"items": []}
    finally:
        receiver.close()


def test_bad_input_and_a_missing_key_exit_2_naming_the_field(db: str) -> None:
    code, out = run(db, "add", "ftp://example.com/")
    assert code == 2, out
    assert "url" in out, out
    code, out = run(db, "add", "https://example.com/", "--event", "nope")
    assert code == 2, out
    assert "events[0]" in out, out
    code, out = run(db, "add", "https://example.com/", key=None)
    assert code != 0, out
    assert "TOKENQUOTA_WEBHOOK_KEY" in out, out
    code, out = run(db, "redeliver", "abc")
    assert code == 2, out
    assert "id" in out, out
    code, out = run(db, "show", "wh_nothere")
    assert code != 0, out
    assert "no webhook endpoint" in out, out
    assert json.loads(run(db, "list", "--json")[1]) == {"items": []}

"""Changes to webhook endpoints are in the audit log, never with a secret (every backend).

Creating, enabling or disabling, setting or rotating the secret of, and
removing an endpoint each write one entry (actor, action, the owner's subject
or ``webhooks/<id>`` for staff's, before and after) in the same transaction as
the change; ``GET /v1/audit`` shows them to admin and staff, and a member reads
no audit log at all (its subtree's entries included), as before.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import tokenquota
from tests.api.conftest import ADMIN_KEY, Api
from tests.webhooks.test_webhooks_access import put_subject
from tokenquota import FrozenClock, Quota
from tokenquota.engine.webhooks import Webhooks, server_key
from tokenquota.storage.webhooks import webhook_tables

OWN_SECRET = "a-receivers-own-secret-0123456789"
NEW_SECRET = "the-receivers-next-secret-9876543210"


def audit(client: httpx.Client, target: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit", params={"subject": target})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def test_every_endpoint_change_is_audited_without_its_secret(hooked: Api) -> None:
    with hooked.client() as admin:
        made = admin.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/a", "secret": OWN_SECRET}
        )
        assert made.status_code == 201, made.text
        endpoint = made.json()["id"]
        target = f"webhooks/{endpoint}"
        assert admin.patch(f"/v1/webhooks/{endpoint}", json={"enabled": False}).status_code == 200
        # The same state again changes nothing, and writes nothing.
        assert admin.patch(f"/v1/webhooks/{endpoint}", json={"enabled": False}).status_code == 200
        assert admin.patch(f"/v1/webhooks/{endpoint}", json={"enabled": True}).status_code == 200
        own = admin.put(f"/v1/webhooks/{endpoint}/secret", json={"secret": NEW_SECRET})
        assert own.status_code == 200, own.text
        assert own.json()["secret"] == NEW_SECRET
        assert own.json()["secret_source"] == "supplied"
        rotated = admin.put(f"/v1/webhooks/{endpoint}/secret")
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()["secret"]
        assert fresh.startswith("whsec_")
        assert fresh not in (OWN_SECRET, NEW_SECRET)
        assert admin.get(f"/v1/webhooks/{endpoint}/secret").json()["secret"] == fresh
        sealed = webhook_tables(hooked.quota.store).endpoint(endpoint)
        assert sealed is not None
        assert sealed.sealed is not None
        assert admin.delete(f"/v1/webhooks/{endpoint}").status_code == 204

        entries = audit(admin, target)
        assert [e["action"] for e in entries] == [
            "webhook.create",
            "webhook.update",
            "webhook.update",
            "webhook.secret",
            "webhook.secret",
            "webhook.delete",
        ]
        assert {e["target"] for e in entries} == {target}
        assert {e["actor"] for e in entries} == {"key:bootstrap"}
        create, disable, enable, own_entry, rotate, delete = entries
        assert create["before"] is None
        assert create["after"]["url"] == "https://hooks.example.com/a"
        assert create["after"]["secret_source"] == "supplied"
        assert (disable["before"]["enabled"], disable["after"]["enabled"]) == (True, False)
        assert (enable["before"]["enabled"], enable["after"]["enabled"]) == (False, True)
        assert own_entry["before"]["secret_source"] == own_entry["after"]["secret_source"]
        assert rotate["after"]["id"] == endpoint
        assert delete["before"]["id"] == endpoint
        assert delete["after"] is None
        # No secret in any form: neither the three secrets nor the sealed text, nor a key.
        text = json.dumps(entries)
        for secret in (OWN_SECRET, NEW_SECRET, fresh, sealed.sealed, 'secret":'):
            assert secret not in text
        # The log's own filters: the whole log holds them too.
        everything = admin.get("/v1/audit", params={"limit": 1000}).json()["items"]
        assert [e["action"] for e in everything if e["target"] == target] == [
            e["action"] for e in entries
        ]


def test_a_members_endpoint_is_audited_under_its_subject(hooked: Api) -> None:
    with hooked.client() as admin:
        put_subject(admin, "company:acme")
        put_subject(admin, "team:red", "company:acme")
        made_key, red = hooked.quota.create_key("member", subject="team:red")
        red_id = made_key.id
        with hooked.client(red) as member:
            made = member.post("/v1/webhooks", json={"url": "https://hooks.example.com/red"})
            assert made.status_code == 201, made.text
            endpoint = made.json()["id"]
            assert member.patch(f"/v1/webhooks/{endpoint}", json={"enabled": False}).is_success
            assert member.put(f"/v1/webhooks/{endpoint}/secret").is_success
            assert member.delete(f"/v1/webhooks/{endpoint}").status_code == 204
            # A member reads no audit log: not its own subject's, not anybody's.
            assert member.get("/v1/audit").status_code == 403
            assert member.get("/v1/audit", params={"subject": "team:red"}).status_code == 403
        entries = [e for e in audit(admin, "team:red") if e["action"].startswith("webhook.")]
        assert [e["action"] for e in entries] == [
            "webhook.create",
            "webhook.update",
            "webhook.secret",
            "webhook.delete",
        ]
        assert {e["actor"] for e in entries} == {f"key:{red_id}"}
        assert entries[0]["after"]["owner"] == "team:red"
        # Nothing about it under its id, nor under the parent.
        assert audit(admin, f"webhooks/{endpoint}") == []
        assert not [e for e in audit(admin, "company:acme") if e["action"].startswith("webhook.")]
    # The subject's dashboard page shows them in its audit trail to staff, not to the member.
    for key, shown in ((ADMIN_KEY, True), (red, False)):
        with httpx.Client(base_url=hooked.url, timeout=30) as browser:
            assert browser.post("/dashboard/login", data={"key": key}).status_code in (200, 303)
            page = browser.get("/dashboard/subjects/team:red")
            assert page.status_code == 200
            assert ("webhook.secret" in page.text) is shown
            assert ("webhook.delete" in page.text) is shown


def test_refused_changes_write_no_entry(hooked: Api) -> None:
    with hooked.client() as admin:
        endpoint = admin.post("/v1/webhooks", json={"url": "https://hooks.example.com/b"}).json()[
            "id"
        ]
        before = admin.get("/v1/audit", params={"limit": 1000}).json()["total"]
        bad = admin.put(f"/v1/webhooks/{endpoint}/secret", json={"secret": "short"})
        assert bad.status_code == 422
        assert bad.json()["error"]["details"]["field"] == "secret"
        assert admin.put("/v1/webhooks/wh_0000/secret").status_code == 404
        assert admin.delete("/v1/webhooks/wh_0000").status_code == 404
        assert admin.patch(f"/v1/webhooks/{endpoint}", json={"enabled": "no"}).status_code == 422
        assert admin.get("/v1/audit", params={"limit": 1000}).json()["total"] == before


def _rename(quota: Quota, old: str, new: str) -> None:
    """Rename a table of the store's own database (its own file, or its own schema)."""
    db = quota.store.db  # type: ignore[attr-defined]
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_entry_and_the_change_commit_together(quota: Quota, clock: FrozenClock) -> None:
    """An entry that cannot be written takes its change with it (one transaction)."""
    webhooks = Webhooks(quota, server_key("audit-test-webhook-key-0123456789"))
    kept, _ = webhooks.create("https://hooks.example.com/kept", actor="ops")
    _rename(quota, "audit", "audit_away")
    try:
        with pytest.raises(Exception, match="audit"):
            webhooks.create("https://hooks.example.com/lost", actor="ops")
        with pytest.raises(Exception, match="audit"):
            webhooks.set_enabled(kept.id, False, actor="ops")
        with pytest.raises(Exception, match="audit"):
            webhooks.set_secret(kept.id, actor="ops")
        with pytest.raises(Exception, match="audit"):
            webhooks.remove(kept.id, actor="ops")
        assert [e.url for e in webhooks.endpoints()] == ["https://hooks.example.com/kept"]
        assert webhooks.get(kept.id).enabled
        assert webhooks.get(kept.id).sealed is None  # the secret stayed derived
    finally:
        _rename(quota, "audit_away", "audit")
    webhooks.remove(kept.id, actor="ops")
    [entry] = [e for e in quota.audit(subject=f"webhooks/{kept.id}").items if e.after is None]
    assert entry.action == "webhook.delete"
    assert entry.actor == "ops"
    assert entry.at == clock.now()


def test_the_memory_store_audits_under_its_one_lock(clock: FrozenClock) -> None:
    with tokenquota.open("memory://", clock=clock) as quota:
        webhooks = Webhooks(quota, server_key("audit-test-webhook-key-0123456789"))
        endpoint, _ = webhooks.create("https://hooks.example.com/m", actor="ops")
        webhooks.set_secret(endpoint.id, actor="ops")
        sealed = webhook_tables(quota.store).endpoint(endpoint.id)
        webhooks.remove(endpoint.id, actor="ops")
        entries = quota.audit(subject=f"webhooks/{endpoint.id}").items
        assert [e.action for e in entries] == ["webhook.create", "webhook.secret", "webhook.delete"]
        assert entries[1].before == entries[1].after | {"secret_source": "derived"}
        assert entries[1].after["secret_source"] == "supplied"
        assert sealed is not None
        assert sealed.sealed is not None
        assert sealed.sealed not in json.dumps([[e.before, e.after] for e in entries])

"""/dashboard over real HTTP, without a browser: the session cookie, isolation, headers.

tests/api/test_dashboard_browser.py drives the same pages in chromium.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def acme(make_api: ServerFactory) -> Api:
    api = make_api(clock=FrozenClock(NOW))
    quota = api.quota
    quota.put_subject("org:acme", name="Acme")
    quota.put_subject("user:alice", parents=["org:acme"])
    quota.put_subject("user:bob", parents=["org:acme"])
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.consume("user:alice", tokens=300, model="gpt-x")
    quota.consume("user:bob", tokens=50)
    return api


def browser(api: Api) -> httpx.Client:
    """A client that keeps cookies and sends none of the API's headers."""
    return httpx.Client(base_url=api.url, timeout=30)


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/dashboard/login", data={"key": key})


def test_signed_out_pages_lead_to_the_sign_in(acme: Api) -> None:
    with browser(acme) as client:
        for path in ("/dashboard", "/dashboard/subjects/user:alice"):
            response = client.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == "/dashboard/login"
        form = client.get("/dashboard/login")
        assert form.status_code == 200
        assert 'name="key"' in form.text
        # An API header is not a dashboard session.
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert client.get("/dashboard", headers=headers).status_code == 303


def test_the_session_cookie_is_http_only_strict_and_scoped(
    acme: Api, caplog: pytest.LogCaptureFixture
) -> None:
    server_side = ("tokenquota", "uvicorn", "fastapi")  # httpx's own debug log is the client's
    for name in server_side:
        caplog.set_level(logging.DEBUG, logger=name)
    with browser(acme) as client:
        response = sign_in(client, ADMIN_KEY)
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard"
        cookie = response.headers["set-cookie"].lower()
        for part in ("httponly", "samesite=strict", "path=/dashboard", "max-age=28800"):
            assert part in cookie
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert ADMIN_KEY not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "user:alice" in page.text
        out = client.post("/dashboard/logout")
        assert out.status_code == 303
        assert 'tokenquota_dashboard=""' in out.headers["set-cookie"]
        assert client.get("/dashboard").status_code == 303
    served = [r for r in caplog.records if r.name.startswith(server_side)]
    assert all(ADMIN_KEY not in r.getMessage() for r in served)


def test_a_wrong_or_revoked_key_does_not_sign_in(acme: Api) -> None:
    issued, key = acme.quota.create_key("staff")
    with browser(acme) as client:
        refused = sign_in(client, "tq_nothing_real")
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers
        assert sign_in(client, key).status_code == 303
        assert client.get("/dashboard").status_code == 200
        acme.quota.revoke_key(issued.id)  # the session ends with its key
        assert client.get("/dashboard").status_code == 303


def test_a_form_from_another_site_does_not_sign_in(acme: Api) -> None:
    with browser(acme) as client:
        response = client.post(
            "/dashboard/login", data={"key": ADMIN_KEY}, headers={"Origin": "https://evil.example"}
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


def test_a_member_sees_its_subtree_and_not_a_sibling(acme: Api) -> None:
    with browser(acme) as client:
        assert sign_in(client, acme.key("member", "user:bob")).status_code == 303
        top = client.get("/dashboard")
        assert top.status_code == 200
        assert "user:bob" in top.text
        assert "user:alice" not in top.text
        assert "org:acme" not in top.text
        sibling = client.get("/dashboard/subjects/user:alice")
        assert sibling.status_code == 403
        assert "300" not in sibling.text
        above = client.get("/dashboard", params={"parent": "org:acme"})
        assert above.status_code == 403
        own = client.get("/dashboard/subjects/user:bob")
        assert own.status_code == 200
        assert "admin and staff" in own.text  # the audit trail is theirs


def test_the_pages_are_not_in_the_api_document(acme: Api) -> None:
    with acme.client() as admin:
        paths = admin.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]
    assert "/v1/insights/top-consumers" in paths


def test_the_stylesheet_is_served_by_the_service(acme: Api) -> None:
    with browser(acme) as client:
        response = client.get("/dashboard/static/dashboard.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")


def test_times_are_shown_in_the_store_s_zone(make_api: ServerFactory) -> None:
    api = make_api(clock=FrozenClock(NOW), timezone="Europe/Stockholm")
    api.quota.set_limit("user:sven", "tokens", "day", 100)
    api.quota.consume("user:sven", tokens=10)
    with browser(api) as client:
        assert sign_in(client, ADMIN_KEY).status_code == 303
        page = client.get("/dashboard/subjects/user:sven").text
    # Midnight in Stockholm (23:00 UTC): the day resets, and the day's column starts, there.
    assert '<dd data-field="reset">2026-03-11 00:00 CET</dd>' in page
    assert "<td>2026-03-10 00:00 CET</td>" in page

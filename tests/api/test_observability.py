"""X-Request-ID on every answer and the log lines (issue 14, part 3), in process.

The fast path (``http.fastpath``) answers the hot routes without FastAPI, so
each check runs on it (exactly ``application/json``) and on the usual path (a
charset makes the type another one).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tests.proxy import Proxy
from tokenquota.http import logs

GENERATED = re.compile(r"[0-9a-f]{32}")
KINDS = ["application/json", "application/json; charset=utf-8"]


@pytest.fixture
def api(make_api: ServerFactory) -> Api:
    made = make_api()
    made.quota.set_limit("user:ann", "tokens", "day", 10)
    return made


def post(api: Api, path: str, body: object, kind: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}{path}",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": kind, **headers},
        timeout=30,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_request_id_is_echoed_on_decisions(api: Api, kind: str) -> None:
    body = {"subject": "user:ann", "amounts": {"tokens": 6}}
    allowed = post(api, "/v1/consume", body, kind, **{"X-Request-ID": "req-1.a:B_z"})
    assert allowed.status_code == 200
    assert allowed.headers["X-Request-ID"] == "req-1.a:B_z"
    denied = post(api, "/v1/consume", body, kind, **{"X-Request-ID": "req-2"})
    assert denied.status_code == 429 or kind == KINDS[1]  # the second server spent again
    assert denied.headers["X-Request-ID"] == "req-2"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "presented",
    [b"", b"has space", b"x" * (logs.MAX_REQUEST_ID + 1), b"semi;colon", "é".encode("latin-1")],
)
def test_an_unsafe_or_long_request_id_is_replaced(api: Api, kind: str, presented: bytes) -> None:
    answer = httpx.post(
        f"{api.url}/v1/check",
        content=b'{"subject": "user:ann", "amounts": {"tokens": 1}}',
        headers=[
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
            (b"content-type", kind.encode()),
            (b"x-request-id", presented),
        ],
        timeout=30,
    )
    assert answer.status_code == 200
    assert GENERATED.fullmatch(answer.headers["X-Request-ID"])


def test_the_longest_allowed_id_is_kept(api: Api) -> None:
    longest = "a" * logs.MAX_REQUEST_ID
    body = {"subject": "user:ann", "amounts": {"tokens": 1}}
    answer = post(api, "/v1/check", body, KINDS[0], **{"X-Request-ID": longest})
    assert answer.headers["X-Request-ID"] == longest


def test_every_answer_has_its_own_id_errors_included(api: Api) -> None:
    answers = [
        httpx.get(f"{api.url}/healthz"),
        httpx.get(f"{api.url}/metrics"),
        httpx.get(f"{api.url}/nowhere"),  # 404
        httpx.delete(f"{api.url}/v1/consume"),  # 405
        httpx.post(f"{api.url}/v1/consume", json={"subject": "user:ann"}),  # 401
        post(api, "/v1/consume", {"subject": "user:ann", "amounts": {"tokens": -1}}, KINDS[0]),
        post(api, "/v1/consume", {"subject": "user:ann"}, KINDS[0], Authorization="Bearer no"),
        httpx.post(  # 413 on its Content-Length alone
            f"{api.url}/v1/consume",
            content=b"x" * (300 * 1024),
            headers={"Content-Type": "application/json"},
        ),
        httpx.get(f"{api.url}/v1/subjects/user:ann/usage", headers={"X-API-Key": ADMIN_KEY}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 405, 401, 422, 401, 413, 200]
    ids = [a.headers["X-Request-ID"] for a in answers]
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    echoed = httpx.get(f"{api.url}/nowhere", headers={"X-Request-ID": "lost-1"})
    assert echoed.headers["X-Request-ID"] == "lost-1"


@pytest.mark.parametrize("kind", KINDS)
def test_request_and_decision_lines_name_the_key_id_never_the_key(
    api: Api, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = api.key("service")
    key_id = next(k.id for k in api.quota.list_keys().items if k.role.value == "service")
    caplog.set_level(logging.INFO, logger="tokenquota.access")
    caplog.set_level(logging.INFO, logger="tokenquota.decisions")
    body = {"subject": "user:ann", "amounts": {"tokens": 8}}
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "trace-7"}
    for _ in range(2):  # allowed, then denied
        httpx.post(
            f"{api.url}/v1/consume",
            content=json.dumps(body).encode(),
            headers={**headers, "Content-Type": kind},
            timeout=30,
        )
    decisions = [r for r in caplog.records if r.name == "tokenquota.decisions"]
    requests = [
        r
        for r in caplog.records
        if r.name == "tokenquota.access" and r.fields["path"] == "/v1/consume"  # type: ignore[attr-defined]
    ]
    assert [r.fields["outcome"] for r in decisions] == ["allowed", "denied"]  # type: ignore[attr-defined]
    assert [r.fields["status"] for r in requests] == [200, 429]  # type: ignore[attr-defined]
    for record in decisions + requests:
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["request_id"] == "trace-7"
        assert fields["key_id"] == key_id
        assert fields["subject"] == "user:ann"
    formatted = [logs.JsonFormatter().format(r) for r in decisions + requests]
    formatted += [logs.TextFormatter().format(r) for r in decisions + requests]
    assert all(key not in line and ADMIN_KEY not in line for line in formatted)
    parsed = [json.loads(line) for line in formatted[: len(decisions) + len(requests)]]
    assert parsed[0]["operation"] == "consume"
    assert parsed[0]["outcome"] == "allowed"
    assert parsed[1]["blocking"] == 1


def test_a_json_line_holds_an_exception_and_stays_one_line() -> None:
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = logging.LogRecord("tokenquota", logging.ERROR, __file__, 1, "boom", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["exception"].endswith("ValueError: two\nlines")


def gauge(api: Api, name: str) -> float | None:
    text = httpx.get(f"{api.url}/metrics", timeout=30).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_the_spool_depth_is_exposed_when_failing_open(
    make_api: ServerFactory, tmp_path: Path
) -> None:
    opened = make_api(on_store_error="open", spool=str(tmp_path / "spool.db"))
    assert gauge(opened, "tokenquota_spool_depth") == 0.0
    closed = make_api()
    assert gauge(closed, "tokenquota_spool_depth") is None
    assert gauge(closed, "tokenquota_ledger_pending_events") is None  # no mover on SQL


def test_the_redis_ledger_lag_is_read_from_the_mover(
    make_api: ServerFactory, redis_url: str
) -> None:
    api = make_api(redis=redis_url)
    mover = api.quota.store.meter.mover  # type: ignore[attr-defined]
    mover.stop.set()  # the background passes stop: nothing moves unless asked
    mover.thread.join(timeout=10)
    mover.flush()
    assert gauge(api, "tokenquota_ledger_pending_events") == 0.0
    assert gauge(api, "tokenquota_ledger_lag_seconds") == 0.0
    for _ in range(3):
        assert (
            post(
                api, "/v1/consume", {"subject": "user:lag", "amounts": {"tokens": 1}}, KINDS[0]
            ).status_code
            == 200
        )
    lag = api.quota.ledger_lag()
    assert lag is not None
    assert lag.pending == 3
    assert 0 <= lag.seconds < 60
    assert gauge(api, "tokenquota_ledger_pending_events") == 3.0
    assert mover.flush() == 3
    assert gauge(api, "tokenquota_ledger_pending_events") == 0.0


def test_a_store_outage_is_counted_and_decisions_are_timed(
    make_api: ServerFactory, postgres_url: str
) -> None:
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None
    assert parts.port is not None
    proxy = Proxy(parts.hostname, parts.port)
    try:
        api = make_api(db=postgres_url.replace(f":{parts.port}/", f":{proxy.port}/", 1))
        body = {"subject": "user:cut", "amounts": {"tokens": 1}}
        assert post(api, "/v1/consume", body, KINDS[0]).status_code == 200
        proxy.cut()
        for kind in KINDS:
            assert post(api, "/v1/consume", body, kind).status_code == 503
        text = httpx.get(f"{api.url}/metrics", timeout=30).text
        assert 'tokenquota_store_errors_total{lane="decisions"} 2.0' in text
        assert 'tokenquota_store_seconds_count{lane="decisions"} 3.0' in text
        assert 'route="/v1/consume",status="503"} 2.0' in text
    finally:
        proxy.cut()

"""/metrics and the log lines of a real ``tokenquota serve --workers 2`` (issue 14, part 3).

Each worker counts in its own process; before the multiprocess mode a scrape
read whichever worker answered it (2, 4, 2, 4). Here every scrape, on a new
connection each, must read exactly the traffic sent, and the JSON log lines
must tell the same story without ever holding a key.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_serve import (
    ADMIN_KEY,
    StartServe,
    clean_env,
    consume,
    create_key,
    free_port,
    run_cli,
    serve,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.slow  # like every test that starts serve

ALLOWED, DENIED, CHECKS, SCRAPES = 10, 5, 3, 6


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, by its labels, summed over duplicates."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = tuple(sorted(sample.labels.items()))
                out[labels] = out.get(labels, 0.0) + sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for found, v in samples(text, name).items()
        if all(dict(found).get(k) == want for k, want in labels.items())
    )


def json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_two_workers_expose_exactly_the_traffic_and_log_it_without_keys(
    tmp_path: Path,
    serve: StartServe,  # noqa: F811
) -> None:
    db = f"sqlite:///{tmp_path / 'observed.db'}"
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    run_cli(
        "limits", "set", "user:obs", "tokens", "day", str(ALLOWED * 10), "--db", db, cwd=tmp_path
    )
    key_id, key = create_key(db, tmp_path, "service")
    env = clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN_KEY, TMPDIR=str(temp))
    server = serve(
        "--port", str(port), "--db", db, "--workers", "2", "--access-log", port=port, env=env
    )
    assert [p.name for p in temp.iterdir() if p.name.startswith("tokenquota-metrics-")]

    codes = [consume(server.url, key, "user:obs", 10).status_code for _ in range(ALLOWED + DENIED)]
    assert codes.count(200) == ALLOWED
    assert codes.count(429) == DENIED
    for _ in range(CHECKS):
        checked = httpx.post(
            f"{server.url}/v1/check",
            json={"subject": "user:obs", "amounts": {"tokens": 1}},
            headers={"Authorization": f"Bearer {key}", "X-Request-ID": "trace-obs.1:2"},
            timeout=30,
        )
        assert checked.status_code == 200
        assert checked.headers["X-Request-ID"] == "trace-obs.1:2"

    for _ in range(SCRAPES):  # a new connection each: the workers take turns
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        decisions = "tokenquota_decisions_total"
        assert value(text, decisions, operation="consume", outcome="allowed") == ALLOWED
        assert value(text, decisions, operation="consume", outcome="denied") == DENIED
        assert value(text, decisions, operation="check", outcome="denied") == CHECKS  # spent
        requests = "tokenquota_requests_total"
        assert value(text, requests, route="/v1/consume", status="200") == ALLOWED
        assert value(text, requests, route="/v1/consume", status="429") == DENIED
        assert value(text, requests, route="/v1/check", status="200") == CHECKS
        timed = "tokenquota_request_seconds_count"
        assert value(text, timed, route="/v1/consume", method="POST") == ALLOWED + DENIED

    assert server.terminate() in (0, -signal.SIGTERM)
    # serve removed the workers' shared directory on its way out.
    assert not [p for p in temp.iterdir() if p.name.startswith("tokenquota-metrics-")]

    output = server.output()
    assert key not in output
    assert ADMIN_KEY not in output
    lines = json_lines(output)
    assert any("Started server process" in line["message"] for line in lines)
    requests_logged = [
        line
        for line in lines
        if line["logger"] == "tokenquota.access" and line["path"] == "/v1/consume"
    ]
    assert sorted(line["status"] for line in requests_logged) == [200] * ALLOWED + [429] * DENIED
    for line in requests_logged:
        assert line["method"] == "POST"
        assert line["key_id"] == key_id
        assert line["subject"] == "user:obs"
        assert line["duration_ms"] >= 0
        assert len(line["request_id"]) == 32
    assert len({line["request_id"] for line in requests_logged}) == ALLOWED + DENIED
    decisions_logged = [line for line in lines if line["logger"] == "tokenquota.decisions"]
    consumes = [line for line in decisions_logged if line["operation"] == "consume"]
    assert (
        sorted(line["outcome"] for line in consumes) == ["allowed"] * ALLOWED + ["denied"] * DENIED
    )
    assert all(line["blocking"] == 1 for line in consumes if line["outcome"] == "denied")
    assert all(line["blocking"] == 0 for line in consumes if line["outcome"] == "allowed")
    checks = [line for line in decisions_logged if line["operation"] == "check"]
    assert [line["request_id"] for line in checks] == ["trace-obs.1:2"] * CHECKS
    # Each request's decision line and request line share its id.
    assert {line["request_id"] for line in consumes} == {
        line["request_id"] for line in requests_logged
    }


def test_text_logs_and_no_request_lines_without_the_access_log(
    tmp_path: Path,
    serve: StartServe,  # noqa: F811
) -> None:
    db = f"sqlite:///{tmp_path / 'quiet.db'}"
    port = free_port()
    env = clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN_KEY, TOKENQUOTA_LOG_FORMAT="text")
    server = serve("--port", str(port), "--db", db, port=port, env=env)
    assert consume(server.url, ADMIN_KEY, "user:quiet", 1).status_code == 200
    assert server.terminate() in (0, -signal.SIGTERM)
    output = server.output()
    assert "INFO uvicorn.error Application startup complete." in output
    assert "tokenquota.access" not in output
    assert "tokenquota.decisions" not in output
    assert not json_lines(output)
    assert ADMIN_KEY not in output

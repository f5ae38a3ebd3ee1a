"""``tokenquota_holds_in_flight`` on a real ``tokenquota serve --workers 2`` over SQLite.

The gauge is the store's live holds, read at scrape time by whichever worker
answers (and kept a few seconds, engine/inflight.py): after known reserves,
commits, releases, lease releases and expiries, every scrape, on a new
connection each so the workers take turns, must show exactly what is live,
and a later change must show within the cache's few seconds.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.api.test_observability_serve import value
from tests.api.test_serve import (
    ADMIN_KEY,
    StartServe,
    clean_env,
    free_port,
    serve,  # noqa: F401  (the fixture)
)
from tokenquota.engine.inflight import CACHE_SECONDS

pytestmark = pytest.mark.slow  # like every test that starts serve

GAUGE = "tokenquota_holds_in_flight"
SCRAPES = 6
WAIT_SECONDS = 60.0  # a bound for a stuck test on busy cores, not a speed check


def post(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    # A new connection per request, so uvicorn's workers share the load.
    answer = httpx.post(
        f"{url}{path}", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    assert answer.status_code in (200, 201), answer.text
    return dict(answer.json())


def delete(url: str, path: str) -> None:
    answer = httpx.delete(f"{url}{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code in (200, 204), answer.text


def reserve(url: str, ttl: int) -> str:
    made = post(
        url, "/v1/reservations", {"subject": "user:obs", "amounts": {"tokens": 5}, "ttl": ttl}
    )
    return str(made["reservation"]["id"])  # type: ignore[index]


def acquire(url: str, ttl: int) -> str:
    made = post(url, "/v1/leases", {"subject": "user:obs", "ttl": ttl})
    return str(made["lease"]["id"])  # type: ignore[index]


def in_flight(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text  # a new connection: any worker
    return value(text, GAUGE, kind="reservation"), value(text, GAUGE, kind="lease")


def test_two_workers_show_the_live_holds_of_the_store(
    tmp_path: Path,
    serve: StartServe,  # noqa: F811
) -> None:
    db = f"sqlite:///{tmp_path / 'holds.db'}"
    port = free_port()
    server = serve(
        "--port",
        str(port),
        "--db",
        db,
        "--workers",
        "2",
        port=port,
        env=clean_env(TOKENQUOTA_ADMIN_KEY=ADMIN_KEY, TMPDIR=str(tmp_path)),
    )
    url = server.url
    limits = {"limits": [{"metric": "concurrent_requests", "limit": 10}]}
    answer = httpx.put(
        f"{url}/v1/subjects/user:obs/limits",
        json=limits,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text

    committed, released, kept = reserve(url, 60), reserve(url, 60), reserve(url, 60)
    reserve(url, 1)  # lapses, never settled
    also_kept = reserve(url, 60)
    freed, _ = acquire(url, 60), acquire(url, 1)  # the second lapses
    leases = [acquire(url, 60) for _ in range(3)]
    post(url, f"/v1/reservations/{committed}/commit", {"amounts": {"tokens": 4}})
    delete(url, f"/v1/reservations/{released}")
    delete(url, f"/v1/leases/{freed}")
    time.sleep(1.5)  # past the 1 s holds' expiry

    # No scrape before this one: every worker reads the store afresh.
    for _ in range(SCRAPES):
        assert in_flight(url) == (2.0, 3.0)

    # A later change shows within the cache's few seconds, on every worker.
    delete(url, f"/v1/reservations/{kept}")
    delete(url, f"/v1/leases/{leases[0]}")
    deadline = time.monotonic() + WAIT_SECONDS
    seen: list[tuple[float, float]] = []
    while seen[-SCRAPES:] != [(1.0, 2.0)] * SCRAPES:
        assert time.monotonic() < deadline, seen[-SCRAPES:]
        seen.append(in_flight(url))
        time.sleep(CACHE_SECONDS / 10)
    assert also_kept
    assert server.terminate() in (0, -signal.SIGTERM)

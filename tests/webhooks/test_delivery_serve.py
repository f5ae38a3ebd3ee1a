"""Delivery by real ``tokenquota serve`` processes: crashes and several replicas.

The replicas run the worker in their own processes, as deployed (tests/replicas.py);
the events are put in the shared store's outbox by hand (outbox.py).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import migrated_sqlite
from tests.replicas import ADMIN_KEY, Fleet, client, free_port
from tests.webhooks.conftest import WEBHOOK_KEY
from tests.webhooks.outbox import alert, insert_url
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.slow

WAIT_SECONDS = 120.0  # a bound for a stuck test on 2 busy cores, not a speed check


def config(tmp_path: Path, **extra: Any) -> Path:
    settings = {
        "webhook_key": WEBHOOK_KEY,
        "webhook_poll_seconds": 0.05,
        "webhook_backoff_seconds": 0.05,
        "webhook_backoff_max_seconds": 0.5,
        "webhook_timeout_seconds": 5,
        **extra,
    }
    path = tmp_path / "webhooks.toml"
    path.write_text(
        "".join(
            f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
            for k, v in settings.items()
        )
    )
    return path


def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return migrated_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "hooks.db")
    return str(request.getfixturevalue("postgres_url"))


def all_delivered(http: httpx.Client, endpoint_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page = http.get(f"/v1/webhooks/{endpoint_id}/deliveries", params={"limit": 1000})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if len(items) == count and all(d["status"] == "delivered" for d in items):
            return list(items)
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_three_replicas_racing_deliver_each_event_exactly_once(
    fleet: Fleet, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db = store(backend, tmp_path, request)
    receiver = Receiver()
    try:
        replicas = fleet.start(3, ["--db", db, "--config", str(config(tmp_path))])
        with client(replicas[0].url, ADMIN_KEY) as http:
            endpoint = http.post("/v1/webhooks", json={"url": receiver.url}).json()
        events: list[int] = []
        for _wave in range(3):  # while the replicas are busy with the last wave
            events += [insert_url(db, alert(f"user:u{len(events) + i}")) for i in range(20)]
        receiver.wait_for(len(events), WAIT_SECONDS)
        with client(replicas[1].url, ADMIN_KEY) as http:
            rows = all_delivered(http, endpoint["id"], len(events))
        time.sleep(0.5)  # many passes of every replica: nothing is sent again
        got = receiver.received()
    finally:
        receiver.close()
    sent = Counter(int(r.header("TokenQuota-Event-Id")) for r in got)
    assert sorted(sent) == sorted(events)
    assert set(sent.values()) == {1}, [e for e, n in sent.items() if n > 1]
    assert {d["attempts"] for d in rows} == {1}
    assert len({d["event_id"] for d in rows}) == len(events)


@pytest.mark.parametrize("receiver_state", ["down", "slow"])
def test_sigkill_between_recording_and_delivery_loses_nothing(
    fleet: Fleet, tmp_path: Path, sqlite_template: Path, receiver_state: str
) -> None:
    """Events recorded, the server SIGKILLed before they are delivered (the receiver
    refusing connections, or holding the request): after a restart every one arrives."""
    db = migrated_sqlite(sqlite_template, tmp_path / "crash.db")
    port = free_port()
    # Slow: the receiver answers after longer than it takes to kill the server.
    receiver = Receiver(delay=3.0, port=port) if receiver_state == "slow" else None
    args = ["--db", db, "--config", str(config(tmp_path, webhook_timeout_seconds=10))]
    try:
        [replica] = fleet.start(1, args)
        with client(replica.url, ADMIN_KEY) as http:
            endpoint = http.post(
                "/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"}
            ).json()
        before = [insert_url(db, alert(f"user:k{i}")) for i in range(5)]
        deadline = time.monotonic() + WAIT_SECONDS
        if receiver is not None:  # in flight: the receiver holds the requests
            while receiver.arrivals < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        else:  # tried, refused, waiting for a retry
            with client(replica.url, ADMIN_KEY) as http:
                while not any(
                    d["attempts"] >= 1
                    for d in http.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["items"]
                ):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
        replica.kill()  # SIGKILL: no shutdown, leases and retries left as they were
        if receiver is None:
            receiver = Receiver(port=port)
        else:
            receiver.delay = 0.0
        after = [insert_url(db, alert(f"user:k{i}")) for i in range(5, 8)]  # while down
        again = fleet.restart(replica)
        with client(again.url, ADMIN_KEY) as http:
            rows = all_delivered(http, endpoint["id"], len(before) + len(after))
        got = receiver.received()
    finally:
        if receiver is not None:
            receiver.close()
    # At least once: every event arrived and was answered 2xx; one cut off mid-send
    # may have arrived twice (its lease ran out and it was sent again).
    assert {int(r.header("TokenQuota-Event-Id")) for r in got} == set(before + after)
    assert {d["event_id"] for d in rows} == set(before + after)

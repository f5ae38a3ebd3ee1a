"""The service prunes in the background (issue 14 part 4), seen through the API."""

from __future__ import annotations

import time
from datetime import timedelta

from tests.api.conftest import ServerFactory
from tests.conftest import START
from tokenquota import FrozenClock


def test_the_service_prunes_ended_reservations_in_the_background(make_api: ServerFactory) -> None:
    clock = FrozenClock(START)
    api = make_api(
        clock=clock,
        retention_days=30,
        holds_hours=0,
        prune_grace_seconds=0,
        prune_interval_seconds=0.1,
        prune_pause_ms=0,
    )
    assert api.quota.retention == timedelta(days=30)  # retention_days reached the engine
    with api.client() as client:
        made = client.post(
            "/v1/reservations", json={"subject": "user:ann", "amounts": {"tokens": 5}, "ttl": 10}
        )
        assert made.status_code == 201, made.text
        rid = made.json()["reservation"]["id"]
        assert client.get(f"/v1/reservations/{rid}").status_code == 200
        clock.advance(timedelta(seconds=11))  # expired: gone at the next run
        deadline = time.monotonic() + 20
        while client.get(f"/v1/reservations/{rid}").status_code != 404:
            assert time.monotonic() < deadline, "the background pruning never ran"
            time.sleep(0.05)
        # The usage the reservation never spent reads as before: nothing.
        usage = client.get("/v1/subjects/user:ann/usage")
        assert usage.status_code == 200

"""The whole way: real consumes cross a rule's thresholds and the receiver gets each once.

The decision step records the crossings (docs/alerts.md); the delivery
worker of the in-process server sends them (docs/webhooks.md).
"""

from __future__ import annotations

import time

from tests.api.conftest import Api
from tests.webhooks.receiver import Receiver
from tokenquota.client import verify_webhook


def test_consumes_crossing_thresholds_are_delivered_once_each(
    hooked: Api, receiver: Receiver
) -> None:
    with hooked.client() as admin:
        endpoint = admin.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["threshold.crossed"]}
        ).json()
        rule = {"metric": "tokens", "window": "day", "limit": 100, "thresholds": [50, 80, 100]}
        answer = admin.put("/v1/subjects/user:ada/limits", json={"limits": [rule]})
        assert answer.status_code == 200, answer.text
        for _ in range(12):  # 10 at a time: 50, 80 and 100 are each crossed once
            admin.post("/v1/consume", json={"subject": "user:ada", "amounts": {"tokens": 10}})
        got = receiver.wait_for(3, timeout=30)
        time.sleep(0.3)
    assert len(receiver.received()) == 3
    assert sorted(r.event["data"]["threshold"] for r in got) == [50, 80, 100]
    for request in got:
        verify_webhook(endpoint["secret"], request.body, request.header("TokenQuota-Signature"))
        assert request.event["data"]["limit"] == 100
        assert request.event["data"]["subject"] == "user:ada"

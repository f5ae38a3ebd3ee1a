"""No webhook secret in the logs of a real ``tokenquota serve`` (issue 14, part 3).

The server key, an endpoint's own secret, a secret set or rotated later, a
derived one and the API keys all pass through a served run here (creation,
``/secret``, a rotation, a delivery that fails once and is retried, a refused
request), with the access log on; none of them may appear anywhere in what the
process wrote.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.api.test_serve import (
    ADMIN_KEY,
    StartServe,
    clean_env,
    free_port,
    serve,  # noqa: F401  (the fixture)
)
from tests.webhooks.conftest import WEBHOOK_KEY
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.slow  # like every test that starts serve

OWN = "the-receivers-own-secret-0123456789"
NEXT = "the-receivers-next-secret-9876543210"
WAIT_SECONDS = 120.0  # a bound for a stuck test on busy cores, not a speed check


def test_a_served_run_logs_no_webhook_secret(
    tmp_path: Path,
    serve: StartServe,  # noqa: F811
) -> None:
    port = free_port()
    env = clean_env(
        TOKENQUOTA_ADMIN_KEY=ADMIN_KEY,
        TOKENQUOTA_WEBHOOK_KEY=WEBHOOK_KEY,
        TOKENQUOTA_WEBHOOK_POLL_SECONDS="0.05",
        TOKENQUOTA_WEBHOOK_BACKOFF_SECONDS="0.05",
        TOKENQUOTA_WEBHOOK_BACKOFF_MAX_SECONDS="0.2",
    )
    db = f"sqlite:///{tmp_path / 'secrets.db'}"
    server = serve("--port", str(port), "--db", db, "--access-log", port=port, env=env)
    receiver = Receiver([500])  # the first attempt fails: a retry, and its log lines
    shown: list[str] = []
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as admin:
            own = admin.post("/v1/webhooks", json={"url": receiver.url, "secret": OWN})
            assert own.status_code == 201, own.text
            derived = admin.post("/v1/webhooks", json={"url": f"{receiver.url}/derived"})
            assert derived.status_code == 201, derived.text
            shown.append(derived.json()["secret"])
            endpoint = own.json()["id"]
            assert admin.put(f"/v1/webhooks/{endpoint}/secret", json={"secret": NEXT}).is_success
            rotated = admin.put(f"/v1/webhooks/{endpoint}/secret")
            assert rotated.status_code == 200, rotated.text
            shown.append(rotated.json()["secret"])
            assert admin.get(f"/v1/webhooks/{endpoint}/secret").json()["secret"] == shown[-1]
            refused = admin.put(f"/v1/webhooks/{endpoint}/secret", json={"secret": "tiny-sec-42"})
            assert refused.status_code == 422
            rule = {"metric": "tokens", "window": "day", "limit": 10, "thresholds": [50]}
            assert admin.put("/v1/subjects/user:s/limits", json={"limits": [rule]}).is_success
            spent = admin.post("/v1/consume", json={"subject": "user:s", "amounts": {"tokens": 6}})
            assert spent.status_code == 200, spent.text
            receiver.wait_for(3, WAIT_SECONDS)  # one failed, then one to each endpoint
            deadline = time.monotonic() + WAIT_SECONDS
            while (
                admin.get(f"/v1/webhooks/{endpoint}/deliveries").json()["items"][0]["status"]
                != "delivered"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        receiver.close()
    assert server.terminate() in (0, -signal.SIGTERM)
    output = server.output()
    assert "webhook.secret" not in output  # audit entries are not log lines either
    assert '"path": "/v1/webhooks/{endpoint_id}/secret"' in output  # the requests were logged
    for secret in (WEBHOOK_KEY, OWN, NEXT, "tiny-sec-42", ADMIN_KEY, *shown):
        assert secret not in output, secret

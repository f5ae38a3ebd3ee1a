"""A live server per test with webhooks on, on the backend asked for, and a receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api import conftest as api_fixtures
from tests.api.conftest import Api, ServerFactory
from tests.webhooks.receiver import Receiver

make_api = api_fixtures.make_api  # the live servers of tests/api, here too

WEBHOOK_KEY = "webhook-test-server-key-0123456789abcdef"
# Quick, so tests wait little; the backoff is still random and exponential.
FAST = {
    "webhook_key": WEBHOOK_KEY,
    "webhook_poll_seconds": 0.05,
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_max_seconds": 0.2,
    "webhook_timeout_seconds": 5,
}
WEBHOOK_BACKENDS = ["memory", "sqlite", "postgres", "redis"]


def backend_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "memory":
        return {"db": "memory://"}
    if backend == "sqlite":
        return {}  # make_api's migrated SQLite file
    settings: dict[str, Any] = {"db": request.getfixturevalue("postgres_url")}
    if backend == "redis":
        settings["redis"] = request.getfixturevalue("redis_url")
    return settings


@pytest.fixture(params=WEBHOOK_BACKENDS)
def hooked(request: pytest.FixtureRequest, make_api: ServerFactory) -> Api:
    """A live server with webhooks on, over each backend."""
    return make_api(**backend_settings(request.param, request), **FAST)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.close()

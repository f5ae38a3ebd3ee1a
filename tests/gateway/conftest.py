"""The gateway's fixtures: the test upstream and a tokenquota server in front of it.

Both are real HTTP servers on loopback ports (tests/live.py); the official
``openai`` SDK talks to the gateway as an application would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from tests.conftest import migrated_sqlite
from tests.gateway.upstream import TestUpstream
from tests.live import LiveServer
from tokenquota import FrozenClock, Quota
from tokenquota.api.app import create_app
from tokenquota.settings import Settings

ADMIN_KEY = "gateway-test-admin-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"


@dataclass
class Served:
    upstream: TestUpstream
    url: str


@dataclass
class Gateway:
    url: str
    quota: Quota
    upstream: TestUpstream
    opened: list[Any] = field(default_factory=list)  # SDK clients, closed after the test

    @property
    def base_url(self) -> str:
        return f"{self.url}/openai/v1"

    def key(self, role: str, subject: str | None = None) -> str:
        return self.quota.create_key(role, subject=subject)[1]

    def sdk(self, key: str, **kwargs: Any) -> openai.OpenAI:
        sdk = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, **kwargs)
        self.opened.append(sdk)
        return sdk

    def async_sdk(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, **kwargs)

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def held(self, subject: str) -> dict[str, Any]:
        """Every reservation (``reserved``) and lease (``concurrent_requests`` used) that
        the subject's limits and its ancestors' show: empty when nothing is held."""
        usage = self.quota.usage(subject, include_ancestors=True)
        return {
            f"{s.subject} {s.metric}/{s.window}": s.reserved or s.used
            for s in usage.limits
            if s.reserved or (s.metric == "concurrent_requests" and s.used)
        }


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def serve_upstream() -> Iterator[Callable[..., Served]]:
    servers: list[LiveServer] = []

    def factory(**knobs: Any) -> Served:
        upstream = TestUpstream(**knobs)
        server = LiveServer(upstream.app)
        servers.append(server)
        return Served(upstream, f"{server.url}/v1")

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def make_gateway(
    tmp_path: Path, sqlite_template: Path, serve_upstream: Callable[..., Served]
) -> Iterator[GatewayFactory]:
    servers: list[LiveServer] = []
    made: list[Gateway] = []

    def factory(
        *,
        clock: FrozenClock | None = None,
        upstream: Served | None = None,
        upstream_settings: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Gateway:
        served = upstream or serve_upstream(api_key=UPSTREAM_KEY)
        settings.setdefault(
            "db", migrated_sqlite(sqlite_template, tmp_path / f"gw{len(servers)}.db")
        )
        settings.setdefault(
            "upstreams",
            [
                {
                    "name": "local",
                    "url": served.url,
                    "api_key": served.upstream.api_key,
                    **(upstream_settings or {}),
                }
            ],
        )
        built = Settings(admin_key=SecretStr(ADMIN_KEY), **settings)
        server = LiveServer(create_app(built, clock=clock))
        servers.append(server)
        made.append(Gateway(server.url, server.app.state.quota, served.upstream))
        return made[-1]

    yield factory
    for gateway in made:
        for sdk in gateway.opened:
            sdk.close()
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()

"""A real tokenquota server per test: its own app and store (SQLite in tmp), over real HTTP.

The uvicorn underneath is shared between tests in turn (tests/live.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import migrated_sqlite
from tests.live import LiveServer
from tokenquota import FrozenClock, Quota
from tokenquota.api.app import create_app
from tokenquota.settings import Settings

ADMIN_KEY = "test-bootstrap-admin-key-0123456789abcdef"
# LiveServer moved to tests/live.py; the test files still import it from here.
__all__ = ["ADMIN_KEY", "Api", "LiveServer", "ServerFactory", "admin", "api", "make_api"]


@dataclass
class Api:
    url: str
    quota: Quota
    clock: FrozenClock | None

    def client(self, key: str | None = ADMIN_KEY, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def key(self, role: str, subject: str | None = None) -> str:
        """A fresh key of that role, made through the engine the server runs on."""
        return self.quota.create_key(role, subject=subject)[1]


ServerFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path, sqlite_template: Path) -> Iterator[ServerFactory]:
    servers: list[LiveServer] = []

    def factory(*, clock: FrozenClock | None = None, **settings: Any) -> Api:
        if "db" not in settings:
            settings["db"] = migrated_sqlite(sqlite_template, tmp_path / f"api{len(servers)}.db")
        built = Settings(admin_key=SecretStr(ADMIN_KEY), **settings)
        server = LiveServer(create_app(built, clock=clock))
        servers.append(server)
        return Api(server.url, server.app.state.quota, clock)

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def api(make_api: ServerFactory) -> Api:
    return make_api()


@pytest.fixture
def admin(api: Api) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client

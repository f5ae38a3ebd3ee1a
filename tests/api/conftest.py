"""A real tokenquota server per test: uvicorn on an ephemeral loopback port, SQLite in tmp."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from tokenquota import FrozenClock, Quota
from tokenquota.api.app import create_app
from tokenquota.settings import Settings

ADMIN_KEY = "test-bootstrap-admin-key-0123456789abcdef"


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


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
def make_api(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[LiveServer] = []

    def factory(*, clock: FrozenClock | None = None, **settings: Any) -> Api:
        settings.setdefault("db", f"sqlite:///{tmp_path / f'api{len(servers)}.db'}")
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

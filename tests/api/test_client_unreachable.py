"""The client on a dead or silent server: its own error, with the URL, saying what is safe."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import threading
from collections.abc import Iterator

import pytest

from tokenquota import TokenQuotaError
from tokenquota.client import AsyncClient, Client, ServiceUnreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_dead_server_raises_service_unreachable_with_the_url() -> None:
    port = _closed_port()
    with (
        Client(f"http://127.0.0.1:{port}", "tq_x") as client,
        pytest.raises(ServiceUnreachable) as raised,
    ):
        client.consume("user:a", tokens=1)
    error = raised.value
    assert isinstance(error, TokenQuotaError)
    assert error.code == "service_unreachable"
    assert error.url == f"http://127.0.0.1:{port}/v1/consume"
    assert error.url in error.message
    assert error.maybe_applied is False
    assert "nothing was sent" in error.message


def test_a_silent_server_may_have_applied_the_request(silent_port: int) -> None:
    async def run() -> ServiceUnreachable:
        async with AsyncClient(f"http://127.0.0.1:{silent_port}", "tq_x", timeout=0.3) as client:
            with pytest.raises(ServiceUnreachable) as raised:
                await client.consume("user:a", tokens=1, idempotency_key="k1")
            return raised.value

    error = asyncio.run(run())
    assert error.maybe_applied is True
    assert "retry with the same idempotency_key" in error.message
    assert error.details == {"url": error.url, "maybe_applied": True}


def test_a_stream_on_a_dead_server_raises_it_too() -> None:
    port = _closed_port()
    with (
        Client(f"http://127.0.0.1:{port}", "tq_x") as client,
        pytest.raises(
            ServiceUnreachable, match=r"GET http://127\.0\.0\.1:[0-9]+/v1/events got no answer"
        ),
    ):
        list(client.export_events("csv"))


def test_the_client_says_its_version() -> None:
    from tokenquota.client._protocol import headers

    assert headers("tq_x")["User-Agent"] == (
        f"tokenquota-client/{importlib.metadata.version('tokenquota')}"
    )

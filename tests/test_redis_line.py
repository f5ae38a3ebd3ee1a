"""The step's own connections on a single Redis (storage/redis/line.py).

The conformance suite runs every operation through the line; these tests
cover what it does beside redis-py's pool: a connection the server closed
while idle is replaced before use, a call whose connection broke after the
command was sent is never sent again (the script may have run), and a Redis
that does not answer within the client's timeout is a timeout (the kernel
keeps it: see ``line.kernel_timeouts``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tokenquota
from tokenquota import Quota, StoreUnavailable
from tokenquota.storage.redis import RedisStore
from tokenquota.storage.redis.line import Line, Wire


@pytest.fixture
def quota(postgres_url: str, redis_url: str) -> Iterator[Quota]:
    with tokenquota.open(postgres_url, redis=redis_url) as opened:
        opened.set_limit("user:ann", "tokens", "day", 1_000)
        yield opened


def line_of(quota: Quota) -> Line:
    assert isinstance(quota.store, RedisStore)
    line = quota.store.meter.ops._line
    assert line is not None  # a single Redis
    return line


def used(quota: Quota) -> int:
    (status,) = quota.usage("user:ann").limits
    return int(status.used or 0)


def test_a_connection_the_server_closed_while_idle_is_replaced(
    quota: Quota, redis_url: str
) -> None:
    assert quota.consume("user:ann", tokens=3).allowed
    line = line_of(quota)
    (wire,) = line._idle
    host, port = wire.sock.getsockname()[:2]
    admin = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        assert admin.client_kill(f"{host}:{port}")
    finally:
        admin.close()
    assert quota.consume("user:ann", tokens=4).allowed
    assert line._idle
    assert line._idle[0] is not wire
    assert used(quota) == 7


def test_a_call_cut_after_it_was_sent_is_not_sent_again(
    quota: Quota, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script ran once in Redis; the caller hears the store unreachable, and the
    usage is counted once, not again by a retry of the same command."""
    line_of(quota)
    cuts: list[int] = []
    plain = Wire.call

    def cut_after_sending(wire: Wire, frame: list[bytes]) -> Any:
        reply = plain(wire, frame)
        if not cuts:  # once: the script ran, then the line is cut before its reply
            cuts.append(1)
            raise redis.ConnectionError("cut after sending")
        return reply

    monkeypatch.setattr(Wire, "call", cut_after_sending)
    with pytest.raises(StoreUnavailable):
        quota.consume("user:ann", tokens=5)
    assert not line_of(quota)._idle  # the broken connection is not kept
    assert used(quota) == 5  # it ran once
    assert quota.consume("user:ann", tokens=1).allowed
    assert used(quota) == 6


def test_closing_a_store_whose_mover_was_stopped_closes_the_line(
    postgres_url: str, redis_url: str
) -> None:
    """A test (or an operator's tooling) may stop the mover before closing: the store's
    close then skips the rest, but never leaves the line's sockets to the collector."""
    opened = tokenquota.open(postgres_url, redis=redis_url)
    assert opened.consume("user:ann", tokens=1).allowed
    line = line_of(opened)
    (wire,) = line._idle
    assert isinstance(opened.store, RedisStore)
    store = opened.store
    store.mover.stop.set()
    opened.close()
    try:
        assert not line._idle
        assert wire.sock.fileno() == -1  # closed
    finally:  # what that close skips
        store.redis.close()
        store.db.close()


def test_a_redis_that_does_not_answer_is_a_timeout_within_the_clients_bound() -> None:
    """A server that takes the command and never replies: the call fails as redis-py's
    TimeoutError after about the client's socket timeout, and the connection is not
    kept. Without a bound the kernel holds, it would wait until the server hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]
    seen: list[bytes] = []
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        with conn:
            while chunk := conn.recv(65_536):
                seen.append(chunk)
                if b"EVALSHA" not in chunk:  # the connection's hello: +OK to each command
                    commands = sum(line.startswith(b"*") for line in chunk.split(b"\r\n"))
                    conn.sendall(b"+OK\r\n" * commands)
            # EVALSHA: never answered, until the client hangs up

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.3, protocol=2)
    line = Line(client, "return 1")
    outcome: list[BaseException] = []

    class Script:
        sha = "0" * 40

    def call() -> None:
        try:
            line.evalsha(Script(), [b"k"], b"$1\r\n1\r\n$1\r\nk\r\n", [b"{}", b""])
        except BaseException as exc:
            outcome.append(exc)

    threading.Thread(target=serve, daemon=True).start()
    caller = threading.Thread(target=call, daemon=True)
    start = time.monotonic()
    caller.start()
    try:
        caller.join(5)
        took = time.monotonic() - start
        assert not caller.is_alive(), "still waiting for a reply after 5 s"
        (error,) = outcome
        assert isinstance(error, redis.TimeoutError)
        assert 0.25 < took < 5
        assert not line._idle  # never reused
        assert any(b"EVALSHA" in chunk for chunk in seen)
    finally:
        for conn in accepted:  # a caller still waiting hears the end of the stream
            with contextlib.suppress(OSError):  # closed already when the caller hung up
                conn.shutdown(socket.SHUT_RDWR)
        caller.join(5)
        line.close()
        client.close()
        server.close()

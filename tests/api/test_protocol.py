"""``serve``'s HTTP protocol: an answer leaves in one write, with the same bytes.

uvicorn's httptools protocol writes the head and the body of an answer apart;
``http.protocol`` gathers what one turn of the event loop writes into one
write to the socket. These drive the protocol with a transport that records
each write, as uvloop's would send it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tokenquota.http.protocol import HELD_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport

BODY = b'{"allowed":true}'
REQUEST = (
    b"POST /v1/consume HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    b"content-length: 2\r\n\r\n{}"
)


class Recording(asyncio.Transport):
    """A transport that keeps each write instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An answer in two messages, as every Starlette response sends it."""
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def answered(protocol_class: type[HttpToolsProtocol], requests: int) -> list[bytes]:
    """What ``protocol_class`` writes answering ``requests`` requests on one connection."""
    config = Config(app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = Recording()
    protocol.connection_made(transport)
    for _ in range(requests):
        protocol.data_received(REQUEST)
        for _ in range(20):  # the app's task, then the turn's flush
            await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport.writes


def test_each_answer_leaves_in_one_write_with_the_bytes_uvicorn_writes() -> None:
    mine = asyncio.run(answered(CoalescingHttpToolsProtocol, 3))
    uvicorn = asyncio.run(answered(HttpToolsProtocol, 3))
    assert len(uvicorn) == 6  # a head and a body each
    assert len(mine) == 3
    assert mine == [uvicorn[i] + uvicorn[i + 1] for i in (0, 2, 4)]
    assert mine[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert mine[0].endswith(b"\r\n\r\n" + BODY)


def test_closing_sends_what_is_pending_first_and_a_closing_transport_takes_nothing() -> None:
    async def run() -> None:
        transport = Recording()
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        wrapped.write(b"bad")
        wrapped.close()  # before the turn ends, as uvicorn closes after a 400
        assert transport.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\nbad"]
        assert transport.closed
        assert wrapped.is_closing()

        late = Recording()
        wrapped = CoalescingTransport(late, asyncio.get_running_loop())
        wrapped.write(b"lost")
        late.close()  # the peer went away meanwhile
        await asyncio.sleep(0)
        assert late.writes == []
        assert wrapped.get_extra_info("peername") == ("127.0.0.1", 5000)  # the transport's

    asyncio.run(run())


def test_a_large_write_goes_out_at_once_so_flow_control_still_sees_it() -> None:
    async def run() -> None:
        transport = Recording()
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        wrapped.write(b"head")
        big = b"x" * HELD_BYTES
        wrapped.write(big)  # past the bound: sent now, with what came before it
        assert transport.writes == [b"head" + big]
        wrapped.write(b"tail")
        await asyncio.sleep(0)
        assert transport.writes == [b"head" + big, b"tail"]

    asyncio.run(run())

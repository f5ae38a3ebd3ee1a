"""uvicorn's httptools protocol, with an answer's writes leaving in one send.

uvicorn writes an answer in two calls to its transport: the status line and
headers when the app sends ``http.response.start``, then the body. uvloop
sends each at once (its buffer is empty), so every answer cost the worker two
``write`` system calls and two TCP segments, and the client two segments to
take in, on a machine whose CPUs the service shares with its clients
(docs/performance-log.md, session 10). Here the connection's transport is
wrapped so that what is written in one turn of the event loop is sent
together at the end of that turn: one system call and one segment for a
whole answer, the bytes unchanged.

Only where httptools is installed (``serve`` asks ``protocol_class``): the
h11 protocol that serves elsewhere is left as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Past this many bytes held, a write goes out at once: the transport's own buffer
# then says when to pause the writer (uvicorn's flow control), as without us.
HELD_BYTES: Final = 64 * 1024


class CoalescingTransport:
    """A transport whose writes in one turn of the loop go out as one write.

    Anything else is the wrapped transport's own; closing it first sends what
    is pending, so an answer written just before a close is not lost.
    """

    __slots__ = ("_held", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._held = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._held += len(data)
        if self._held > HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what was written since the last flush (nothing when already closing)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._held = 0
        if self._transport.is_closing():  # as the transport's own write would drop it
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` over a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)

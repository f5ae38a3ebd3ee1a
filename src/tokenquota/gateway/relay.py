"""Passing an upstream's SSE stream through, and knowing what it cost.

The events go to the client as the upstream wrote them. The gateway asked the
upstream for the final usage chunk (``stream_options.include_usage``); when the
client did not ask for it, that one chunk is dropped, and nothing else changes.
Meanwhile the text of every delta passed on is kept, so that a stream that ends
early (the client went away, the upstream failed) is charged the prompt plus
the tokens actually streamed, counted with the model's tokenizer.

``RelayResponse`` sends the stream and, unlike Starlette's ``StreamingResponse``
on an ASGI 2.4 server, also listens for the client's disconnect while the
upstream is silent, so a client that leaves a stalled stream ends it at once.
Either way ``finish`` runs exactly once, shielded from the cancellation.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenquota.gateway import tokens
from tokenquota.gateway.billing import Usage

_EVENT_END: Final = re.compile(rb"\r?\n\r?\n")
DONE: Final = b"data: [DONE]\n\n"


class StreamRelay:
    """One stream's pass-through and bookkeeping."""

    def __init__(
        self,
        upstream: httpx.Response,
        model: str,
        prompt_tokens: int,
        client_wants_usage: bool,
        settle: Callable[[Usage | None], Awaitable[None]],
    ) -> None:
        self.upstream = upstream
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.client_wants_usage = client_wants_usage
        self._settle = settle
        self.reported: Usage | None = None
        self.streamed: list[str] = []
        self.finished = False

    def usage(self) -> Usage:
        """What the upstream reported, else the prompt and what was streamed, counted."""
        if self.reported is not None:
            return self.reported
        return Usage(self.prompt_tokens, tokens.count(self.model, "".join(self.streamed)))

    async def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        with anyio.CancelScope(shield=True):
            try:
                await self.upstream.aclose()
            finally:
                await self._settle(self.usage())

    def _look(self, event: bytes) -> bool:
        """Note what ``event`` says; False when it is the usage chunk to drop."""
        data = b"\n".join(
            line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")
        )
        if not data or data == b"[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return True
        if not isinstance(chunk, dict):
            return True
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                self.streamed.append(piece)
        reported = _usage_of(chunk.get("usage"))
        if reported is not None:
            self.reported = reported
            if not self.client_wants_usage and not choices:
                return False
        return True

    async def events(self) -> AsyncGenerator[bytes, None]:
        """The upstream's events, each with its blank line; the stream's cost is settled
        before its last event goes out, so a client that has read to the end finds
        the ledger already written."""
        buffer = b""
        try:
            async for data in self.upstream.aiter_bytes():
                buffer += data
                while True:
                    found = _EVENT_END.search(buffer)
                    if found is None:
                        break
                    event, buffer = buffer[: found.start()], buffer[found.end() :]
                    if event.strip() == b"data: [DONE]":
                        await self.finish()
                        yield DONE
                        return
                    if self._look(event):
                        yield event + b"\n\n"
        except httpx.HTTPError as exc:
            await self.finish()
            error = {
                "error": {
                    "message": f"the upstream failed mid-stream: {type(exc).__name__}",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_failed",
                }
            }
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
            return
        if buffer.strip() and self._look(buffer):
            yield buffer + b"\n\n"
        await self.finish()


def _usage_of(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 <= completion:
        return Usage(prompt, completion)
    return None


def usage_of(body: Any) -> Usage | None:
    """The ``usage`` of a JSON answer, when it has a well-formed one."""
    return _usage_of(body.get("usage")) if isinstance(body, dict) else None


class RelayResponse(Response):
    """An SSE answer that ends (and settles) as soon as the client disconnects."""

    media_type = "text/event-stream"

    def __init__(self, relay: StreamRelay, headers: dict[str, str]) -> None:
        # Not Response.__init__: it renders an empty body, whose Content-Length: 0
        # would end the answer before the stream began.
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache"})
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = self.relay.events()
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                "headers": self.raw_headers,
                            }
                        )
                        async for chunk in events:
                            await send(
                                {"type": "http.response.body", "body": chunk, "more_body": True}
                            )
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:
                        pass  # the client went away while we were sending
                    finally:
                        group.cancel_scope.cancel()

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(listen)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()
            await self.relay.finish()

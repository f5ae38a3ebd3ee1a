"""A stand-in for a model server: a small OpenAI-compatible upstream for the gateway's tests.

No server that runs a real model (vLLM, Ollama, llama.cpp) fits on the machines
the tests run on, so this one speaks OpenAI's wire format without a model:
``GET /v1/models``, ``POST /v1/chat/completions`` (a JSON answer, or SSE
chunks ending in ``data: [DONE]``, with the final usage chunk when
``stream_options.include_usage`` asks for it), ``/v1/completions`` (also
streamed) and ``/v1/embeddings``, and OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``.

Its usage is deterministic, so a test knows to the token what the gateway
must have committed:

- ``prompt_tokens``: the o200k_base tokens of every text in the request, plus
  4 per chat message and 2 more. The formula differs from the gateway's own
  estimate on purpose: a gateway that committed its estimate instead of the
  reported usage would be caught.
- ``completion_tokens``: ``min(max_tokens, output_tokens)``; each token is one
  of ``WORDS`` (one token in every OpenAI encoding), one per streamed chunk.

Knobs (attributes, set by a test before it calls): ``output_tokens``,
``chunk_delay`` (seconds between streamed chunks), ``pause_after`` (stream that
many tokens, then wait until the client goes away), ``abort_after`` (stream that
many, then drop the connection without ``[DONE]``), ``fail_status`` (answer every
completion with that HTTP status and an OpenAI error). ``requests`` keeps each
request's path, headers and body, so a test can see what the gateway sent on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import bpe_openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = (" alpha", " beta", " gamma", " delta")
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "llama-3-8b")
EMBEDDING_SIZE = 8
PAUSE_SECONDS = 60.0
_ENCODING = bpe_openai.get_encoding("o200k_base")


def count(text: str) -> int:
    return len(_ENCODING.encode_ordinary(text))


def words(n: int, start: int = 0) -> list[str]:
    return [WORDS[(start + i) % len(WORDS)] for i in range(n)]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Aborted(Exception):
    """Raised inside a stream so that uvicorn drops the connection mid-answer."""


@dataclass
class TestUpstream:
    """The app and its knobs; serve it with ``tests.live.LiveServer(upstream.app)``."""

    api_key: str | None = None
    models: tuple[str, ...] = MODELS
    output_tokens: int = 12
    chunk_delay: float = 0.0
    pause_after: int | None = None
    abort_after: int | None = None
    fail_status: int | None = None
    requests: list[Seen] = field(default_factory=list)
    streams_ended: int = 0  # streams that finished, by [DONE], abort or the client leaving
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ],
            exception_handlers={Exception: self._bad_request},
        )

    async def _bad_request(self, request: Request, exc: Exception) -> Response:
        """A body this server cannot read is a 400, as a real server answers it."""
        return self.error(400, f"invalid request: {exc}", "invalid_request_error", None)

    # helpers ------------------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return JSONResponse(body, status_code=status)

    async def _admit(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                body = json.loads(await request.body())
            except ValueError:
                return body, self.error(400, "bad JSON", "invalid_request_error", None)
        with self._lock:
            self.requests.append(Seen(request.url.path, dict(request.headers), body))
        if self.api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return body, self.error(
                401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
            )
        if request.method == "POST" and body.get("model") not in self.models:
            return body, self.error(
                404,
                f"The model `{body.get('model')}` does not exist",
                "invalid_request_error",
                "model_not_found",
            )
        if self.fail_status is not None and request.method == "POST":
            return body, self.error(
                self.fail_status, "the upstream failed (test knob)", "server_error", None
            )
        return body, None

    def completion_tokens(self, body: dict[str, Any]) -> int:
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        return min(int(cap), self.output_tokens)

    @staticmethod
    def chat_prompt_tokens(body: dict[str, Any]) -> int:
        total = 2
        for message in body.get("messages", []):
            total += 4
            content = message.get("content")
            if isinstance(content, str):
                total += count(content)
            elif isinstance(content, list):
                total += sum(count(p.get("text", "")) for p in content if isinstance(p, dict))
        return total

    @staticmethod
    def texts(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return []

    # routes -------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        _, refused = await self._admit(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        body, refused = await self._admit(request)
        if refused is not None:
            return refused
        prompt = self.chat_prompt_tokens(body)
        n = self.completion_tokens(body)
        if body.get("stream"):
            return self._stream(request, body, prompt, n, chat=True)
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words(n))},
                        "finish_reason": "length" if n < self.output_tokens else "stop",
                    }
                ],
                "usage": usage(prompt, n),
            }
        )

    async def _completions(self, request: Request) -> Response:
        body, refused = await self._admit(request)
        if refused is not None:
            return refused
        prompt = sum(count(t) for t in self.texts(body.get("prompt")))
        n = self.completion_tokens(body)
        if body.get("stream"):
            return self._stream(request, body, prompt, n, chat=False)
        return JSONResponse(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "text": "".join(words(n)), "finish_reason": "length"},
                ],
                "usage": usage(prompt, n),
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        body, refused = await self._admit(request)
        if refused is not None:
            return refused
        texts = self.texts(body.get("input"))
        prompt = sum(count(t) for t in texts)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float((len(t) + k) % 7) / 7 for k in range(EMBEDDING_SIZE)],
            }
            for i, t in enumerate(texts)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    # streams ------------------------------------------------------------------------
    def _stream(
        self, request: Request, body: dict[str, Any], prompt: int, n: int, *, chat: bool
    ) -> Response:
        options = body.get("stream_options") or {}
        with_usage = bool(options.get("include_usage"))
        model = body["model"]

        def chunk(piece: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {"content": piece} if piece is not None else {}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                kind = "chat.completion.chunk"
                ident = "chatcmpl-test"
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish}
                kind = "text_completion"
                ident = "cmpl-test"
            out: dict[str, Any] = {
                "id": ident,
                "object": kind,
                "created": 1,
                "model": model,
                "choices": [choice],
            }
            if with_usage:
                out["usage"] = None
            return out

        async def events() -> AsyncIterator[bytes]:
            try:
                if chat:
                    first = chunk(None, None)
                    first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                    yield sse(first)
                for i, piece in enumerate(words(n)):
                    if self.abort_after is not None and i == self.abort_after:
                        raise Aborted("dropped mid-stream (test knob)")
                    if self.pause_after is not None and i == self.pause_after:
                        await until_gone(request)
                    if self.chunk_delay:
                        await asyncio.sleep(self.chunk_delay)
                    yield sse(chunk(piece, None))
                yield sse(chunk(None, "length"))
                if with_usage:
                    last = chunk(None, None)
                    last["choices"] = []
                    last["usage"] = usage(prompt, n)
                    yield sse(last)
                yield b"data: [DONE]\n\n"
            finally:
                with self._lock:
                    self.streams_ended += 1

        return StreamingResponse(events(), media_type="text/event-stream")


async def until_gone(request: Request) -> None:
    """Wait (at most PAUSE_SECONDS) for the client to disconnect, as a stalled model would."""
    for _ in range(int(PAUSE_SECONDS / 0.01)):
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.01)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

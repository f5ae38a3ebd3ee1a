"""The hot routes' short way through: well-formed requests skip FastAPI's machinery.

``POST /v1/consume`` and ``/v1/check`` are most of a deployment's traffic, and
FastAPI's generic path for them (three ASGI layers under ours, routing over
every route, solving dependencies, a body field validated through its
``ModelField``) cost more CPU than the bare endpoint it is measured against
(docs/performance-log.md, "The HTTP path"). A ``FastRoute`` answers such a
request itself, but only when nothing about it can be an error the framework
would have answered:

- a JSON ``Content-Type`` (exactly ``application/json``), an API key, a
  whole body within the cap;
- a body that ``json.loads`` (what Starlette's ``Request.json`` runs) reads
  as an object and the route's own pydantic model accepts, validated the way
  FastAPI validates a lone body model (python mode, from the parsed object);
- then, in FastAPI's order, a key ``Authenticate`` accepts (the bootstrap
  key, or ``KeyLookups``: the key cache, else the one store lookup in flight).

Anything else goes the usual way, with the body already read handed on
unchanged (``Replay``), so every refusal (401, 413, other content types,
422 and its field names) is the one the framework gives; nothing on this side
has any effect before that point but a key lookup, which the usual path would
make anyway, so declining is always safe. Once a
request is taken, the route's own handler runs on its lane, and an exception
it raises is answered by the app's exception handlers, looked up as
Starlette's ``ExceptionMiddleware`` looks them up; one without a handler
propagates to the 500 handler, as from a route.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tokenquota.domain.keys import ApiKey
from tokenquota.http import logs
from tokenquota.http.auth import BOOTSTRAP_KEY, KeyLookups
from tokenquota.http.capacity import Threads

Handler = Callable[[Any, Request, ApiKey], Response]
ExceptionHandler = Callable[[Request, Exception], Any]


@dataclass(frozen=True)
class FastRoute:
    """One hot route: its body model and its handler, run on ``threads``."""

    model: type[BaseModel]
    handler: Handler
    threads: Threads


class Replay:
    """``receive`` for the usual path: the messages already read, then the rest."""

    def __init__(self, messages: list[Message], receive: Receive) -> None:
        self.messages = messages
        self.receive = receive

    async def __call__(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        return await self.receive()


def presented_of(scope: Scope) -> str | None:
    """The key a JSON request presents, read as ``auth.presented_key`` reads it; None
    when there is none or the body is not declared as exactly ``application/json``.

    The headers are read as Starlette's ``Headers.get`` reads them: the first of
    each name, latin-1; Authorization, when sent, wins over X-API-Key.
    """
    authorization: bytes | None = None
    api_key: bytes | None = None
    content_type: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = authorization if authorization is not None else value
        elif name == b"x-api-key":
            api_key = api_key if api_key is not None else value
        elif name == b"content-type":
            content_type = content_type if content_type is not None else value
    if content_type is None or content_type.lower() != b"application/json":
        return None
    if authorization:
        scheme, _, rest = authorization.decode("latin-1").partition(" ")
        presented: str = rest.strip()
        if scheme.lower() not in ("bearer", "token") or not presented:
            return None
        return presented
    return api_key.decode("latin-1") if api_key else None


async def caller_of(presented: str, app_state: Any) -> ApiKey | None:
    """The caller ``Authenticate`` would find, or None where it would answer 401."""
    bootstrap: str | None = app_state.admin_key
    if bootstrap and hmac.compare_digest(presented.encode(), bootstrap.encode()):
        return BOOTSTRAP_KEY
    lookups: KeyLookups = app_state.key_lookups
    return await lookups.caller(app_state.quota, presented)


async def read_body(receive: Receive, max_bytes: int) -> tuple[bytes | None, list[Message]]:
    """The whole body, or None when it did not arrive whole and within the cap;
    with the messages read, for ``Replay``."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None, messages
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def parsed(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body as FastAPI would hand it to the route, or None if it would refuse it."""
    try:
        data = json.loads(body)
    except Exception:  # Starlette's Request.json raises; FastAPI answers 400 or 422
        return None
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except PydanticValidationError:
        return None


def exception_handlers(
    handlers: Mapping[Any, ExceptionHandler],
) -> tuple[dict[type, ExceptionHandler], dict[int, ExceptionHandler]]:
    """The app's handlers as its ``ExceptionMiddleware`` holds them: by class and by
    status, without 500 and ``Exception`` (those are the outer 500 handler's)."""
    by_class: dict[type, ExceptionHandler] = {}
    by_status: dict[int, ExceptionHandler] = {}
    for key, handler in handlers.items():
        if key in (500, Exception):
            continue
        if isinstance(key, int):
            by_status[key] = handler
        else:
            by_class[key] = handler
    return by_class, by_status


async def handled(
    exc: Exception, request: Request, handlers: Mapping[Any, ExceptionHandler]
) -> Response:
    """The answer the app's handlers give ``exc``; re-raised when none would take it."""
    by_class, by_status = exception_handlers(handlers)
    handler = None
    if isinstance(exc, HTTPException):
        handler = by_status.get(exc.status_code)
    if handler is None:
        for cls in type(exc).__mro__:
            if cls in by_class:
                handler = by_class[cls]
                break
    if handler is None:
        raise exc
    response = handler(request, exc)
    if inspect.isawaitable(response):
        response = await response
    assert isinstance(response, Response)
    return response


async def serve(
    fast: FastRoute, max_bytes: int, scope: Scope, receive: Receive, send: Send
) -> Receive | None:
    """Answer the request here and return None, or return the ``receive`` the
    usual path must be called with (the body read so far, replayed)."""
    presented = presented_of(scope)
    if presented is None:
        return receive
    body, messages = await read_body(receive, max_bytes)
    if body is None:
        return Replay(messages, receive)
    model = parsed(fast.model, body)
    if model is None:
        return Replay(messages, receive)
    # Only now, as FastAPI does: a body it cannot read is a 422 whatever the key.
    starlette_app: Any = scope["app"]
    request = Request(scope, receive, send)
    try:
        caller = await caller_of(presented, starlette_app.state)
        if caller is None:  # the usual path answers 401, as it always has
            return Replay(messages, receive)
        logs.seen_key(scope, caller.id)
        response = await fast.threads.run(functools.partial(fast.handler, model, request, caller))
    except Exception as exc:
        response = await handled(exc, request, starlette_app.exception_handlers)
    await response(scope, receive, send)
    return None

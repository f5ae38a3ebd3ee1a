"""The OpenAI-compatible surface under ``/openai/v1``: models, chat, completions, embeddings.

Each call: authenticate, decide who pays (``payer``), route the model to an
upstream, count the prompt, hold the budget (``billing``), forward, then settle
on what the upstream reported. Refusals and errors are OpenAI's shape
(``refusals``). docs/gateway.md is the user's side of this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokenquota.domain.decisions import Decision
from tokenquota.domain.errors import Forbidden, ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.prices import PriceTable
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine import Quota
from tokenquota.gateway import tokens
from tokenquota.gateway.billing import Billing, Held, Usage
from tokenquota.gateway.refusals import denial, openai_error, rate_limit_headers
from tokenquota.gateway.relay import RelayResponse, StreamRelay, usage_of
from tokenquota.gateway.upstreams import Upstreams, upstreams_of
from tokenquota.http.auth import Caller, decision_scope

PREFIX: Final = "/openai/v1"
SUBJECT_HEADER: Final = "X-TokenQuota-Subject"
MAX_CHOICES: Final = 128
MAX_OUTPUT: Final = 10**9
MAX_MODEL_LENGTH: Final = 128  # what the ledger keeps of a model name (engine/inputs.py)
Kind = Literal["chat", "completions", "embeddings"]
_PATHS: Final = {
    "chat": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
}

router = APIRouter(prefix=PREFIX, tags=["gateway"])

_ERROR: Final = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            }
        }
    }
}


def _documented(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """OpenAPI for a forwarding route: the fields the gateway reads (any other field
    goes to the upstream as it is), and OpenAI-shaped errors. Upstream errors pass
    through with the upstream's own status, hence the 4XX and 5XX ranges."""
    return {
        "parameters": [
            {
                "name": SUBJECT_HEADER,
                "in": "header",
                "required": False,
                "description": "With an admin or service key: who pays (kind:id)",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["model", *required],
                        "properties": {
                            "model": {"type": "string"},
                            "user": {"type": "string", "description": "Who pays, as kind:id"},
                            **properties,
                        },
                        "additionalProperties": True,
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "The upstream's answer, as it sent it",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "401": {"description": "No API key, or not a valid one", **_ERROR},
            "429": {"description": "Refused by a quota: Retry-After, x-ratelimit-*", **_ERROR},
            "4XX": {"description": "Refused, or the upstream's own error", **_ERROR},
            "5XX": {"description": "The upstream failed or could not be reached", **_ERROR},
        },
    }


_GENERATION: Final = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_CHOICES},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object"},
}
_CHAT: Final = _documented(
    {
        "messages": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        **_GENERATION,
    },
    ["messages"],
)
_COMPLETIONS: Final = _documented(
    {"prompt": {"type": ["string", "array"]}, **_GENERATION}, ["prompt"]
)
_EMBEDDINGS: Final = _documented({"input": {"type": ["string", "array"]}}, ["input"])
_READ_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No API key, or not a valid one", **_ERROR},
    "4XX": {"description": "Refused, or no such model", **_ERROR},
}


@dataclass
class Gateway:
    upstreams: Upstreams
    billing: Billing
    max_tokens: int


def gateway(request: Request) -> Gateway:
    """The app's gateway, made on first use (the engine opens in the app's lifespan)."""
    state = request.app.state
    found: Gateway | None = getattr(state, "gateway", None)
    if found is None:
        settings = state.settings
        billing = Billing(
            state.quota,
            state.capacity.decisions,
            PriceTable(settings.prices),
            settings.gateway_hold_seconds,
        )
        found = Gateway(
            Upstreams(upstreams_of(settings.upstreams)), billing, settings.gateway_max_tokens
        )
        state.gateway = found
    return found


async def close(state: Any) -> None:
    """Close the upstreams' connection pool (the app's shutdown)."""
    found: Gateway | None = getattr(state, "gateway", None)
    if found is not None:
        state.gateway = None
        await found.upstreams.close()


def payer(caller: ApiKey, request: Request, body: dict[str, Any]) -> SubjectRef:
    """Who pays: a member key's own subject; for an admin or service key, the subject
    named by ``X-TokenQuota-Subject``, else by the body's OpenAI ``user`` field."""
    named = request.headers.get(SUBJECT_HEADER)
    if caller.role is Role.MEMBER:
        assert caller.subject is not None
        if named is not None and named != str(caller.subject):
            raise Forbidden("a member key pays as its own subject")
        return caller.subject
    if caller.role not in (Role.ADMIN, Role.SERVICE):
        raise Forbidden(f"a {caller.role.value} key may not call models")
    if named:
        return SubjectRef.parse(named, SUBJECT_HEADER)
    user = body.get("user")
    if isinstance(user, str) and user:
        return SubjectRef.parse(user, "user")
    raise ValidationError(
        SUBJECT_HEADER,
        f"name who pays (kind:id) in the {SUBJECT_HEADER} header or the user field",
    )


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except RecursionError:  # nesting deeper than the parser goes
        raise ValidationError("body", "is nested too deeply") from None
    except ValueError:
        raise ValidationError("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


def _whole(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(name, f"must be a whole number from {low} to {high}")
    return value


def _prompt(kind: Kind, model: str, body: dict[str, Any]) -> int:
    if kind == "chat":
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise ValidationError("messages", "must be a non-empty list of message objects")
        return tokens.chat_prompt(model, messages)
    name = "prompt" if kind == "completions" else "input"
    value = body.get(name)
    if not isinstance(value, str | list) or not all(map(_text_or_tokens, value)):
        raise ValidationError(name, "must be a string, or a list of strings or of token ids")
    return tokens.text_inputs(model, value)


def _text_or_tokens(item: object) -> bool:
    if isinstance(item, str):
        return True
    if isinstance(item, list):
        return all(_token_id(i) for i in item)
    return _token_id(item)


def _token_id(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def _check_types(body: dict[str, Any]) -> None:
    """The fields the gateway acts on, in OpenAI's types (the rest is the upstream's)."""
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise ValidationError("stream", "must be true or false")
    if "stream_options" in body and not isinstance(body["stream_options"], dict | None):
        raise ValidationError("stream_options", "must be an object")
    if "user" in body and not isinstance(body["user"], str | None):
        raise ValidationError("user", "must be a string")


def _answer_text(data: Any) -> str:
    """The text of a JSON answer's choices (for an upstream that reports no usage)."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return ""
    parts = []
    for choice in data["choices"]:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _upstream_error(status: int, content: bytes) -> Response:
    """The upstream's error as it wrote it when it is OpenAI's shape, else wrapped in it."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return Response(content, status_code=status, media_type="application/json")
    text = content.decode("utf-8", "replace")[:500] or f"the upstream answered {status}"
    return openai_error(status, text, "upstream_error", None)


async def _settle(billing: Billing, held: Held, usage: Usage | None) -> None:
    with anyio.CancelScope(shield=True):
        await billing.settle(held, usage)


async def _seen(request: Request, caller: ApiKey, decision: Decision) -> Decision:
    """``decision`` as the caller may see it (contract §10)."""
    if caller.role is not Role.MEMBER:
        return decision
    quota: Quota = request.app.state.quota
    lane = request.app.state.capacity.decisions
    scope = await lane.run(lambda: decision_scope(quota, caller, decision))
    return decision.visible_to(scope) if scope is not None else decision


async def call(request: Request, caller: ApiKey, kind: Kind) -> Response:
    gw = gateway(request)
    body = await _body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("model", "must name a model")
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        # Checked before anything is held: the ledger event names the model.
        raise ValidationError("model", f"at most {MAX_MODEL_LENGTH} printable characters")
    _check_types(body)
    subject = payer(caller, request, body)
    route = await gw.upstreams.route(model)
    if route is None:
        return openai_error(
            404,
            f"The model `{model}` does not exist",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    forward = {**body, "model": route.model}
    prompt = _prompt(kind, route.model, body)
    stream = kind != "embeddings" and body.get("stream") is True
    completion = 0
    if kind != "embeddings":
        newer = _whole(body, "max_completion_tokens", 1, MAX_OUTPUT)
        older = _whole(body, "max_tokens", 1, MAX_OUTPUT)
        cap = max(newer or 0, older or 0) or None  # the larger, should a server read it
        if cap is None:
            cap = forward["max_tokens"] = gw.max_tokens
        choices = _whole(body, "n", 1, MAX_CHOICES) or 1
        if kind == "completions":
            choices = max(choices, _whole(body, "best_of", 1, MAX_CHOICES) or 1)
        completion = cap * choices
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    if stream:
        forward["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    upstream = route.upstream
    held = await gw.billing.hold(
        subject,
        upstream.resource,
        Usage(prompt, completion),
        model=route.model,
        upstream=upstream.name,
        price_names=(f"{upstream.name}/{route.model}", route.model),
    )
    now = request.app.state.quota.clock.now()
    if isinstance(held, Decision):
        return denial(await _seen(request, caller, held), now)
    headers = rate_limit_headers(await _seen(request, caller, held.decision), now)
    client = gw.upstreams.client
    try:
        sent = client.build_request(
            "POST", f"{upstream.url}/{_PATHS[kind]}", json=forward, headers=upstream.headers()
        )
        answer = await client.send(sent, stream=stream)
    except httpx.HTTPError as exc:
        await _settle(gw.billing, held, None)
        return openai_error(
            502,
            f"the upstream {upstream.name} did not answer ({type(exc).__name__})",
            "upstream_error",
            "upstream_unreachable",
        )
    except BaseException:
        await _settle(gw.billing, held, None)
        raise
    if answer.status_code >= 400:
        try:
            content = await answer.aread()
        finally:
            await answer.aclose()
            await _settle(gw.billing, held, None)
        return _upstream_error(answer.status_code, content)
    if stream:

        async def settle(usage: Usage | None) -> None:
            await gw.billing.settle(held, usage)

        relay = StreamRelay(answer, route.model, prompt, wants_usage, settle)
        return RelayResponse(relay, headers)
    content = answer.content
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    usage = usage_of(data) or Usage(prompt, tokens.count(route.model, _answer_text(data)))
    await _settle(gw.billing, held, usage)
    return Response(
        content, status_code=answer.status_code, media_type="application/json", headers=headers
    )


@router.post(
    "/chat/completions",
    summary="OpenAI chat completions, within quota",
    openapi_extra=_CHAT,
)
async def chat_completions(request: Request, caller: Caller) -> Response:
    return await call(request, caller, "chat")


@router.post(
    "/completions", summary="OpenAI (legacy) completions, within quota", openapi_extra=_COMPLETIONS
)
async def completions(request: Request, caller: Caller) -> Response:
    return await call(request, caller, "completions")


@router.post("/embeddings", summary="OpenAI embeddings, within quota", openapi_extra=_EMBEDDINGS)
async def embeddings(request: Request, caller: Caller) -> Response:
    return await call(request, caller, "embeddings")


@router.get("/models", summary="Every upstream's models, named NAME/MODEL", responses=_READ_ERRORS)
async def models(request: Request, caller: Caller) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await gateway(request).upstreams.models()})


@router.get("/models/{model:path}", summary="One model", responses=_READ_ERRORS)
async def model(model: str, request: Request, caller: Caller) -> Response:
    gw = gateway(request)
    route = await gw.upstreams.route(model)
    if route is None or route.model not in await gw.upstreams.listed(route.upstream):
        return openai_error(
            404,
            f"The model `{model}` does not exist",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    return JSONResponse(
        {"id": model, "object": "model", "created": 0, "owned_by": route.upstream.name}
    )

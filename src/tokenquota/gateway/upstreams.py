"""Where a model's calls go: the configured upstreams and the routing of model names.

``NAME/MODEL`` goes to upstream ``NAME`` as ``MODEL``. A bare name goes to the
first upstream whose model list holds it: the list configured for it, or, when
none is configured, what its ``/models`` answers (cached for ``LIST_SECONDS``;
an upstream that does not answer lists nothing for ``RETRY_SECONDS``).

Every upstream is called through one pooled ``httpx.AsyncClient``, with its own
API key, which never leaves the server: the caller's headers are not forwarded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from tokenquota.domain.subjects import SubjectRef

LIST_SECONDS: Final = 60.0
RETRY_SECONDS: Final = 5.0
CONNECT_SECONDS: Final = 10.0
# A completion may think for minutes before its first byte; reads wait that long.
READ_SECONDS: Final = 600.0


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str  # the OpenAI base URL, without a trailing slash: http://vllm:8000/v1
    api_key: str | None
    models: frozenset[str]
    resource: SubjectRef

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True, slots=True)
class Route:
    upstream: Upstream
    model: str  # as the upstream names it


def upstreams_of(rows: Iterable[Any]) -> list[Upstream]:
    """Upstreams from the settings' ``upstreams`` rows (``UpstreamSetting``)."""
    out = []
    for row in rows:
        key = row.api_key.get_secret_value() if row.api_key is not None else None
        resource = SubjectRef.parse(row.resource or f"deployment:{row.name}", "upstreams.resource")
        out.append(Upstream(row.name, row.url.rstrip("/"), key, frozenset(row.models), resource))
    return out


class Upstreams:
    """The upstreams of one app, and the client that calls them."""

    def __init__(self, upstreams: Iterable[Upstream]) -> None:
        self.all = list(upstreams)
        self.by_name = {u.name: u for u in self.all}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
            limits=httpx.Limits(max_connections=1_000, max_keepalive_connections=100),
            follow_redirects=False,
            trust_env=False,
        )
        self._listed: dict[str, tuple[float, frozenset[str]]] = {}

    async def close(self) -> None:
        await self.client.aclose()

    async def route(self, model: str) -> Route | None:
        name, slash, rest = model.partition("/")
        if slash and rest and name in self.by_name:
            return Route(self.by_name[name], rest)
        for upstream in self.all:
            if model in upstream.models:
                return Route(upstream, model)
        for upstream in self.all:
            if not upstream.models and model in await self.listed(upstream):
                return Route(upstream, model)
        return None

    async def listed(self, upstream: Upstream) -> frozenset[str]:
        """The models ``upstream`` serves: configured, else its ``/models`` (cached)."""
        if upstream.models:
            return upstream.models
        now = time.monotonic()
        cached = self._listed.get(upstream.name)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self.client.get(f"{upstream.url}/models", headers=upstream.headers())
            answer.raise_for_status()
            models = frozenset(
                str(m["id"]) for m in answer.json().get("data", []) if isinstance(m, dict)
            )
            self._listed[upstream.name] = (now + LIST_SECONDS, models)
        except (httpx.HTTPError, ValueError, KeyError, AttributeError):
            models = frozenset()
            self._listed[upstream.name] = (now + RETRY_SECONDS, models)
        return models

    async def models(self) -> list[dict[str, Any]]:
        """``/models``: every upstream's models, named ``NAME/MODEL``."""
        out = []
        for upstream in self.all:
            for model in sorted(await self.listed(upstream)):
                out.append(
                    {
                        "id": f"{upstream.name}/{model}",
                        "object": "model",
                        "created": 0,
                        "owned_by": upstream.name,
                    }
                )
        return out

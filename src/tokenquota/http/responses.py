"""JSON answers for the hot path: the bytes Starlette's ``JSONResponse`` sends, encoded faster.

Starlette encodes with ``json.dumps(ensure_ascii=False, separators=(",", ":"))``;
orjson writes the same compact UTF-8 for what our wire encoders build (str,
int, bool, None, lists and dicts with str keys) in about a tenth of the
time. Anything orjson refuses (an int past 64 bits, a non-str key, a lone
surrogate) falls back to Starlette's own encoder, so such a body still
leaves exactly as before, or fails exactly as before.

Floats are the one place the two differ (``1e16`` against ``1e+16``; NaN is
``null`` here and an error there). No decision or hold carries one: amounts
are ints, credits decimal strings (``domain.metrics.wire_number``). Use this
for bodies built by the ``wire`` encoders only; errors keep ``JSONResponse``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` with the body encoded by orjson (same bytes for wire values)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError is one
            return super().render(content)


class JSONBytesResponse(JSONResponse):
    """A JSON answer whose body is already encoded (``wire.decisions.decision_json``).

    It sends what ``JSONResponse(content, status_code, headers)`` sends for the
    content those bytes encode: the given headers first (as ``init_headers``
    makes them: names lower-cased, both latin-1), then ``content-length``, then
    ``content-type: application/json``; built without ``init_headers``' general
    work. ``tests/api/test_answer_bytes.py`` compares the two. A ``JSONResponse``
    for its callers' types; it renders nothing itself.
    """

    def __init__(
        self, body: bytes, status_code: int = 200, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        raw = headers if headers is not None else []
        raw.append((b"content-length", str(len(body)).encode("latin-1")))
        raw.append(_JSON_TYPE)
        self.raw_headers = raw


_JSON_TYPE: Final = (b"content-type", b"application/json")

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

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` with the body encoded by orjson (same bytes for wire values)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError is one
            return super().render(content)

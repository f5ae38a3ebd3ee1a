"""Placeholder for the datarobot compatibility surface (SPEC section 8)."""

from __future__ import annotations

from fastapi import APIRouter

from tokenquota.api.errors import Renderer, error_response

PREFIXES: tuple[str, ...] = ("/api/v2/quotaTemplates", "/api/v2/quotas")
router = APIRouter(include_in_schema=True)
render_error: Renderer = lambda status, code, message, details, headers: error_response(  # noqa: E731
    status, code, message, details, headers
)

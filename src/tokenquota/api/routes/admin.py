"""Placeholder router; filled in by the admin routes work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")

"""Placeholder router; filled in by the reads routes work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")

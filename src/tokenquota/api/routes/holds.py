"""Placeholder router; filled in by the reservations and leases routes work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")

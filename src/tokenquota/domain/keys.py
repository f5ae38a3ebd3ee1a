"""API keys and roles (contract §7).

A key reads ``tq_<id>_<secret>``. Only a SHA-256 of the secret is stored: the
secret carries 256 random bits, so a slow password hash would add nothing,
and the ``id`` lets a lookup find the one row to compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.subjects import SubjectRef

KEY_RE: Final = re.compile(r"tq_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
MAX_KEY_NAME: Final = 128


class Role(StrEnum):
    ADMIN = "admin"  # everything, including keys and defaults
    STAFF = "staff"  # read any usage; set limits, plans and quotas; no keys
    SERVICE = "service"  # check / consume / reserve / lease for any subject; read usage
    MEMBER = "member"  # bound to one subject: its own usage and its descendants'


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    role: Role
    subject: SubjectRef | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None


def format_key(key_id: str, secret: str) -> str:
    return f"tq_{key_id}_{secret}"


def split_key(presented: str) -> tuple[str, str] | None:
    match = KEY_RE.fullmatch(presented)
    return (match[1], match[2]) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def parse_role(value: object, field: str = "role") -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise ValidationError(field, "must be admin, staff, service or member") from None


def validate_key_binding(role: Role, subject: SubjectRef | None) -> None:
    if role is Role.MEMBER and subject is None:
        raise ValidationError("subject", "a member key is bound to one subject")
    if role is not Role.MEMBER and subject is not None:
        raise ValidationError("subject", "only member keys are bound to a subject")

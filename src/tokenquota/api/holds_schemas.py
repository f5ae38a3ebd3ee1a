"""Wire models for reservations and leases (contract §5).

As in ``api.schemas``, amounts and subjects are validated by the engine so a
bad one is named the way the library names it (``amounts.tokens``). The TTL
is checked here, because its bounds belong in the OpenAPI document: a number
of seconds from 1 to 86400 (``domain.holds.MIN_TTL`` .. ``MAX_TTL``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from fastapi import Path
from pydantic import Field

from tokenquota.api.schemas import Amount, DecisionOut, Model, Num
from tokenquota.domain.holds import MAX_TTL, MIN_TTL

DEFAULT_TTL_SECONDS: Final = 60
MAX_ID_LENGTH: Final = 64  # the engine refuses longer ids with the same bound

# Strict: a JSON number only; `true` or "60" is a 422 naming `ttl`, as in the library.
Ttl = Annotated[
    float,
    Field(
        ge=MIN_TTL.total_seconds(),
        le=MAX_TTL.total_seconds(),
        strict=True,
        description="Seconds until the hold lapses by itself (1 to 86400)",
        examples=[60],
    ),
]
# Hold ids are text like any other: the engine refuses NUL, control characters
# and lone surrogates in them with a 422 naming `id` (contract §1).
ReservationPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="A reservation's id (text without control characters)",
    ),
]
LeasePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="A lease's id (text without control characters)",
    ),
]


# reservations ---------------------------------------------------------------------
class ReserveIn(Model):
    subject: str = Field(max_length=200, examples=["user:alice"])
    amounts: dict[str, Amount] = Field(
        default_factory=dict,
        max_length=16,
        description="The estimate to hold; `requests` defaults to 1",
        examples=[{"tokens": 2000}],
    )
    ttl: Ttl = DEFAULT_TTL_SECONDS
    resource: str | None = Field(
        None,
        max_length=200,
        description="A protected resource (e.g. deployment:llama-70b): its quota applies too",
    )


class CommitIn(Model):
    amounts: dict[str, Amount] = Field(
        default_factory=dict,
        max_length=16,
        description="What the call really used (more or less than held); "
        "empty or left out records the held estimate",
        examples=[{"tokens": 1450}],
    )


class ReservationOut(Model):
    id: str
    subject: str
    amounts: dict[str, Num] = Field(description="The held estimate; credits as decimal strings")
    created_at: datetime
    expires_at: datetime
    state: Literal["held", "committed", "released", "expired"] = Field(
        description="expired: still held in name, but past expires_at, so it holds nothing"
    )
    resource: str | None


class ReservedOut(Model):
    reservation: ReservationOut
    decision: DecisionOut


# leases ---------------------------------------------------------------------------
class AcquireIn(Model):
    subject: str = Field(max_length=200, examples=["user:alice"])
    ttl: Ttl = DEFAULT_TTL_SECONDS
    resource: str | None = Field(
        None,
        max_length=200,
        description="A protected resource (e.g. deployment:llama-70b): its quota applies too",
    )


class HeartbeatIn(Model):
    ttl: Ttl = DEFAULT_TTL_SECONDS


class LeaseOut(Model):
    id: str
    subject: str
    created_at: datetime
    expires_at: datetime
    released_at: datetime | None = Field(description="When it was released; null while not")
    state: Literal["held", "released", "expired"]
    resource: str | None


class AcquiredOut(Model):
    lease: LeaseOut
    decision: DecisionOut


class ReleasedOut(Model):
    released: bool = Field(
        description="false when there was nothing left to free (already committed or released)"
    )

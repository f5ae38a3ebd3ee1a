"""Wire models: what the OpenAPI document promises and the client relies on.

Numbers are integers, except credits, which travel as decimal strings so no
JSON parser turns them into floats. Validation of amounts, windows and refs
is the engine's; these models only fix the shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Num = int | str
# Documented as a number or decimal string; the engine validates the value so
# that the error names the field plainly ("amounts.tokens").
Amount = Annotated[
    Any,
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string"}]}),
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Model):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(Model):
    error: ErrorDetail


class LimitStatusOut(Model):
    subject: str
    metric: str
    window: str | None
    limit: Num = Field(description="The cap; -1 means unlimited")
    source: str = Field(
        description="override, plan or default; none when only a shadow rule names this "
        "(metric, window), so nothing enforces it; resource, capacity, saturation or "
        "grant for a resource quota's rules and prepaid credits"
    )
    shadow: bool
    used: Num | None = Field(description="null for per-request caps")
    reserved: Num
    remaining: Num | None = Field(description="null when unlimited; never negative")
    reset_at: datetime | None
    within_limit: bool
    reason: str | None = Field(
        None,
        description=(
            "Why this limit refused the request, null unless it did: limit_reached (a wait "
            "may help), exceeds_limit (the amount alone is more than the whole limit: no "
            "wait helps) or insufficient_credits (the prepaid balance is too low)"
        ),
    )


class WithheldOut(Model):
    reason: str = Field(
        description="ancestor_limit or resource_limit: a limit the caller may not see refused it"
    )
    metric: str


class DecisionOut(Model):
    allowed: bool
    subject: str
    mode: str
    amounts: dict[str, Num]
    timestamp: datetime
    limits: list[LimitStatusOut]
    blocked_by: list[LimitStatusOut]
    shadow_blocked: list[LimitStatusOut]
    retry_after: int | None = Field(description="seconds; null when waiting will not help")
    event_id: int | None
    replayed: bool
    failed_open: bool = Field(
        False,
        description=(
            "true when the store was unreachable and on_store_error=open admitted the "
            "request without it: no limit was checked and limits is empty; the usage is "
            "queued on the replica and stored when the store is back"
        ),
    )
    reason: str | None = Field(
        None,
        description=(
            "Why it was refused, null when allowed: exceeds_limit when some blocking limit "
            "is smaller than the amount itself (retry_after is then null), else "
            "insufficient_credits or limit_reached"
        ),
    )
    blocked_outside: list[WithheldOut] = Field(
        default_factory=list,
        description=(
            "For a member key: refusals by limits outside its subtree (an ancestor's, or a "
            "resource's), without naming them or giving their figures"
        ),
    )


class CheckIn(Model):
    subject: str = Field(max_length=200, examples=["user:alice"])
    amounts: dict[str, Amount] = Field(
        default_factory=dict, max_length=16, examples=[{"tokens": 1200}]
    )
    timestamp: datetime | None = None
    resource: str | None = Field(
        None,
        max_length=200,
        description="A protected resource (e.g. deployment:llama-70b): its quota applies too",
    )


class ConsumeIn(CheckIn):
    mode: str = Field("enforce", description="enforce (default) or record")
    idempotency_key: str | None = Field(None, max_length=255)
    model: str | None = Field(None, max_length=128)
    tags: dict[str, str] | None = Field(None, max_length=32)


class UsageLimitOut(LimitStatusOut):
    shadow_hits: int | None = Field(
        None,
        description="For a shadow limit, how many decisions it would have blocked; "
        "null for an enforced one",
    )


class UsageOut(Model):
    subject: str
    at: datetime
    limits: list[UsageLimitOut]


class StatusOut(Model):
    status: str


class HealthOut(StatusOut):
    version: str = Field(description="The running service's version (the package's).")

"""Wire models for subjects, limits, plans, defaults, keys, audit, history and events.

As in ``api.schemas``, these fix the shape the OpenAPI document promises; the
values (refs, metrics, windows, amounts) are validated by the engine, so a
bad one is a 422 whose ``details.field`` names it the way the library does
(``limits[0].window``). Request models forbid unknown fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, Field, StrictInt

from tokenquota.api.schemas import Amount, ErrorOut, Model, Num

_ERROR_TEXT: dict[int, str] = {
    401: "No valid API key",
    403: "The key's role, or the subject it is bound to, does not allow this",
    404: "Not found",
    409: "Conflicts with what is stored",
    422: "Bad input; details.field names the field at fault",
}


def error_responses(extra: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """401, 403 and 422, plus ``extra`` statuses with their descriptions, all as ``ErrorOut``."""
    texts = {401: _ERROR_TEXT[401], 403: _ERROR_TEXT[403], 422: _ERROR_TEXT[422], **(extra or {})}
    return {
        status: {"model": ErrorOut, "description": text} for status, text in sorted(texts.items())
    }


# subjects --------------------------------------------------------------------
class SubjectIn(Model):
    """Upsert: a field left out (or null) keeps what is stored."""

    name: str | None = Field(None, description="Display name")
    parents: list[str] | None = Field(
        None,
        description="Every parent, as kind:id; replaces the stored list",
        examples=[["company:acme"]],
    )
    metadata: dict[str, Any] | None = Field(None, description="Free JSON object, at most 16 KiB")


class SubjectOut(Model):
    ref: str = Field(description="kind:id")
    kind: str
    id: str
    name: str | None
    metadata: dict[str, Any]
    parents: list[str]
    plan_id: str | None


class SubjectPage(Model):
    items: list[SubjectOut]
    total: int
    offset: int
    limit: int


# limits and plans -------------------------------------------------------------
class RuleIn(Model):
    metric: str = Field(examples=["tokens"])
    window: str | None = Field(
        None,
        description="minute … year, rolling:<N>m|h|d or total; omitted for "
        "concurrent_requests and input_sequence_length",
        examples=["day"],
    )
    limit: Amount | None = Field(
        description="The cap (decimal string or number for credits); -1 unlimited; "
        "null removes the rule at this layer",
        examples=[50_000],
    )
    shadow: bool = Field(False, description="Count and log what it would block; never block")
    thresholds: list[StrictInt] | None = Field(
        None,
        description="Alert thresholds, whole percentages of the limit (1-1000, at most 10); "
        "each is recorded once per window period when usage crosses it (docs/alerts.md)",
        examples=[[50, 80, 100]],
    )


class RuleOut(Model):
    metric: str
    window: str | None
    limit: Num = Field(description="-1 means unlimited; credits as a decimal string")
    shadow: bool
    thresholds: list[int] = Field(default_factory=list, description="Alert thresholds, sorted")


class PlanOut(Model):
    id: str
    name: str
    rules: list[RuleOut]


class EffectiveLimitOut(Model):
    subject: str
    metric: str
    window: str | None
    limit: Num
    source: str = Field(
        description="override, plan or default; none when only a shadow rule names this "
        "(metric, window): nothing enforces it (limit -1)"
    )
    shadow: bool = Field(
        description="A rule on trial: it never blocks and never replaces the enforced limit "
        "listed before it for the same (metric, window)"
    )
    thresholds: list[int] = Field(
        default_factory=list,
        description="The alert thresholds of the rule that supplies this limit",
    )
    shadow_hits: int | None = Field(
        None,
        description="For a shadow limit, how many decisions it would have blocked; "
        "null for an enforced one",
    )


class LimitsIn(Model):
    limits: list[RuleIn] = Field(description="Changes to the subject's own overrides")


class LimitsOut(Model):
    subject: str
    overrides: list[RuleOut]
    plan: PlanOut | None
    effective: list[EffectiveLimitOut] = Field(
        description="Every limit that applies, with the layer it comes from"
    )


class PlanAssignIn(Model):
    plan_id: str = Field(description="A plan's id (or its name)")


class PlanIn(Model):
    name: str = Field(examples=["Gold"])
    rules: list[RuleIn] = Field(default_factory=list)


class PlanUpdateIn(Model):
    name: str | None = Field(None, description="A new name; left out keeps it")
    rules: list[RuleIn] | None = Field(
        None, description="The plan's whole rule set, replacing the stored one; left out keeps it"
    )


class PlansOut(Model):
    items: list[PlanOut]


# defaults ----------------------------------------------------------------------
class DefaultIn(RuleIn):
    kind: str = Field(description="The subject kind it applies to", examples=["user"])


class DefaultsIn(Model):
    defaults: list[DefaultIn]


class DefaultOut(Model):
    kind: str
    metric: str
    window: str | None
    limit: Num
    shadow: bool
    thresholds: list[int] = Field(default_factory=list, description="Alert thresholds, sorted")
    origin: str = Field(description="runtime (set through the API or CLI; wins) or config")


class DefaultsOut(Model):
    defaults: list[DefaultOut]


# keys --------------------------------------------------------------------------
class KeyIn(Model):
    role: str = Field(description="admin, staff, service or member", examples=["service"])
    subject: str | None = Field(None, description="The subject a member key is bound to")
    name: str | None = Field(None, description="A label for people")


class KeyOut(Model):
    id: str
    role: str
    subject: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="The secret; shown this once, never again")


class KeyPage(Model):
    items: list[KeyOut]
    total: int
    offset: int
    limit: int


# audit -------------------------------------------------------------------------
class AuditOut(Model):
    id: int
    at: datetime
    actor: str = Field(description="Who: key:<id> for API calls")
    action: str = Field(description="e.g. override.set, default.set, plan.create, plan.assign")
    target: str = Field(description="A subject ref, or defaults/<kind>, plans/<id>, keys/<id>")
    before: Any
    after: Any


class AuditPage(Model):
    items: list[AuditOut]
    total: int
    offset: int
    limit: int


# history and events -------------------------------------------------------------
class HistoryPointOut(Model):
    start: datetime
    end: datetime
    metric: str
    model: str | None = Field(description='Set when grouped by model ("" for none named)')
    value: Num = Field(description="Integer; a decimal string for credits")


class HistoryOut(Model):
    subject: str
    granularity: str
    group_by: str
    points: list[HistoryPointOut]


class EventOut(Model):
    id: int
    kind: str
    subject: str
    charged: list[str] = Field(description="The subject and every ancestor charged")
    timestamp: datetime
    recorded_at: datetime
    mode: str
    amounts: dict[str, Num]
    model: str | None
    tags: dict[str, str]
    idempotency_key: str | None
    resource: str | None = Field(None, description="The resource the usage was made on, if any")


class EventPage(Model):
    items: list[EventOut]
    total: int
    offset: int
    limit: int


# parameters shared by the route modules ----------------------------------------
# The engine checks the same bound (storage.base.MAX_PAGE); stating it here puts it
# in the OpenAPI document.
MAX_PAGE = 1000
# The pattern documents contract §1's rule; SubjectRef.parse enforces the same
# rule in the route, so a bad ref is a 422 naming `ref` with which half is wrong.
REF_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._@-]{1,128}$"
RefPath = Annotated[
    str,
    Path(
        description=(
            "A subject as kind:id, e.g. user:alice: kind matches [a-z][a-z0-9_-]{0,31}, "
            "id matches [A-Za-z0-9._@-]{1,128}"
        ),
        json_schema_extra={"pattern": REF_PATTERN},
    ),
]
OffsetQuery = Annotated[int, Query(ge=0, le=2**31, description="Skip this many")]
# Far-off instants overflow datetime arithmetic (a zone shift past year 1 or 9999,
# the period after December 9999), so the query bounds them up front.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)


def _bounded_instant(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError("must be from 1970-01-01 and before 9000-01-01")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_bounded_instant)]
LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_PAGE, description=f"At most this many (1-{MAX_PAGE})")
]

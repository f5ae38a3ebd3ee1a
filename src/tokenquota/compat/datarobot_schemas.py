"""Wire models of DataRobot's quotas API (seed 002), field for field.

Names, casing, types, enums and bounds are the seed's: ``minimum``/``maximum``
on limits, capacities, shares and the threshold, ``maxItems`` 100 on rule
lists and 10 000 on policies, enums on ``rule``, ``window``, ``units``,
``consumerType`` and ``resourceType``. Numbers are strict (``"5"`` is not a
limit, ``true`` is not a share), so pydantic refuses a bad value with a 422
before the engine is asked; what only the engine can judge (ids, duplicate
rules, reserved shares summing to more than 1) is refused by the engine and
renamed to these fields by ``compat.datarobot``.

Fields the seed types as non-nullable but optional (``capacity``, and every
field of ``QuotaUpdate`` except ``saturationThreshold``) default to None
without admitting an explicit ``null``: handlers read ``model_fields_set`` to
tell "left out" from "given".
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

RuleName = Literal["concurrentRequests", "inputSequenceLength", "requests", "token"]
WindowName = Literal["day", "hour", "min"]
ConsumerType = Literal["deployment", "user", "usergroup"]
ResourceType = Literal["deployment"]

MAX_RULES: Final = 100
MAX_POLICIES: Final = 10_000
MAX_TEMPLATES_PAGE: Final = 100  # maxItems of QuotaTemplateListResponse.data
MAX_QUOTAS_PAGE: Final = 10_000  # maxItems of QuotaListResponse.data
# Our engine's bound on any count (63 bits); the seed states no maximum.
MAX_LIMIT: Final = 2**63 - 1
# Unset-but-not-nullable fields: the value None never passes validation, it is only the default.
_UNSET: Any = None


class DataRobotModel(BaseModel):
    """camelCase on the wire; unknown fields are refused so a typo is not silently dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True
    )


class QuotaRule(DataRobotModel):
    limit: int = Field(ge=0, le=MAX_LIMIT, description="Maximum limit for the quota rule")
    rule: RuleName = Field(description="Type of quota rule")
    window: WindowName = Field("min", description="Time window for the quota")


class QuotaCapacity(DataRobotModel):
    """Resource capacity, per calendar minute."""

    capacity: int = Field(ge=0, le=MAX_LIMIT, description="Capacity value")
    units: Literal["requests", "token"] = Field(description="Capacity type")


Share = float | None


class QuotaPolicy(DataRobotModel):
    consumer_id: str = Field(description="ID of the consumer")
    consumer_name: str | None = Field(None, description="Consumer name")
    consumer_type: ConsumerType = Field(description="Type of consumer")
    reserved: Share = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="Reserved resource percentage"
    )
    rules: list[QuotaRule] = Field(
        max_length=MAX_RULES, description="List of quota rules for this policy"
    )


class QuotaUpdate(DataRobotModel):
    """PATCH body: every field optional; a field left out keeps what is stored."""

    capacity: QuotaCapacity = Field(_UNSET, description="Resource capacity")
    default_rules: list[QuotaRule] = Field(
        _UNSET, max_length=MAX_RULES, description="List of default quota rules"
    )
    policies: list[QuotaPolicy] = Field(
        _UNSET,
        max_length=MAX_POLICIES,
        description="List of quota policies to overwrite quota per specific consumer",
    )
    saturation_threshold: Share = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="Saturation threshold"
    )


class QuotaCreate(QuotaUpdate):
    """POST body (tokenquota's addition): ``QuotaUpdate`` plus the resource it applies to."""

    resource_id: str = Field(description="ID of the specific resource")
    resource_type: ResourceType = Field(description="Type of resource the quota applies to")


class QuotaResponse(DataRobotModel):
    capacity: QuotaCapacity = Field(_UNSET, description="Resource capacity")
    default_rules: list[QuotaRule] = Field(
        max_length=MAX_RULES, description="List of default quota rules"
    )
    id: str = Field(description="Unique identifier for the quota")
    policies: list[QuotaPolicy] = Field(
        max_length=MAX_POLICIES,
        description="List of quota policies to overwrite quota per specific consumer",
    )
    resource_id: str = Field(description="ID of the specific resource")
    resource_type: ResourceType = Field(description="Type of resource the quota applies to")
    saturation_threshold: Share = Field(
        None, ge=0, le=1, description="Saturation threshold to enable guaranteed quotas"
    )
    user_id: str = Field(description="ID of the user associated with the quota")


class _Page(DataRobotModel):
    count: int = Field(description="The number of items returned on this page.")
    next: str | None = Field(
        json_schema_extra={"format": "uri"},
        description="The URL of the next page (if null, there is no next page).",
    )
    previous: str | None = Field(
        json_schema_extra={"format": "uri"},
        description="The URL of the previous page (if null, there is no previous page).",
    )
    total_count: int = Field(description="The total number of items across all pages.")


class QuotaListResponse(_Page):
    data: list[QuotaResponse] = Field(max_length=MAX_QUOTAS_PAGE, description="List of quotas")


class QuotaTemplateCreate(DataRobotModel):
    """POST body (tokenquota's addition): a template is a plan, so its name is unique."""

    name: str = Field(min_length=1, max_length=128, description="Name of the quota template")
    rules: list[QuotaRule] = Field(
        max_length=MAX_RULES, description="List of quota rules in this template"
    )


class QuotaTemplateResponse(DataRobotModel):
    id: str = Field(description="Unique identifier for the quota template")
    name: str = Field(description="Name of the quota template")
    rules: list[QuotaRule] = Field(
        max_length=MAX_RULES, description="List of quota rules in this template"
    )


class QuotaTemplateListResponse(_Page):
    data: list[QuotaTemplateResponse] = Field(
        max_length=MAX_TEMPLATES_PAGE, description="List of quota templates"
    )


class DataRobotError(BaseModel):
    """DataRobot's error body: a message, and for a 422 the fields at fault."""

    message: str
    errors: dict[str, str] | None = Field(
        None, description="For a 422: each field at fault (e.g. policies[0].reserved) -> why"
    )

"""Subjects (contract §1): who consumes, and the hierarchy they are charged through."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tokenquota.domain.errors import CycleError, ValidationError
from tokenquota.domain.text import check_json_text, check_text

KIND_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
ID_RE: Final = re.compile(r"[A-Za-z0-9._@-]{1,128}")
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_NAME_LENGTH: Final = 256
MAX_PARENTS: Final = 16
# A bound on the whole ancestor set keeps one consume's work bounded.
MAX_ANCESTORS: Final = 64


@dataclass(frozen=True, order=True, slots=True)
class SubjectRef:
    kind: str
    id: str

    @classmethod
    def parse(cls, value: object, field: str = "subject") -> SubjectRef:
        if isinstance(value, SubjectRef):
            return value
        # Every call names its subject as text, and a few subjects make most calls:
        # a ref already parsed is the same value (refs are frozen), without the regexes.
        found = _PARSED.get(value) if type(value) is str and cls is SubjectRef else None
        if found is not None:
            return found
        if not isinstance(value, str):
            raise ValidationError(field, "must be a string of the form kind:id")
        kind, sep, ident = value.partition(":")
        if not sep:
            raise ValidationError(field, f"{value!r} is not of the form kind:id (e.g. user:alice)")
        if not KIND_RE.fullmatch(kind):
            raise ValidationError(field, f"kind {kind!r} must match [a-z][a-z0-9_-]{{0,31}}")
        if not ID_RE.fullmatch(ident):
            raise ValidationError(field, f"id {ident!r} must match [A-Za-z0-9._@-]{{1,128}}")
        ref = cls(kind, ident)
        if type(value) is str and cls is SubjectRef:
            if len(_PARSED) >= _MAX_PARSED:
                _PARSED.clear()  # many subjects: start afresh rather than grow
            _PARSED[value] = ref
        return ref

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


# Refs parsed from text, by that text (``SubjectRef.parse``); only valid ones.
_PARSED: dict[str, SubjectRef] = {}
_MAX_PARSED: Final = 4_096


def parse_kind(value: object, field: str = "kind") -> str:
    if not isinstance(value, str) or not KIND_RE.fullmatch(value):
        raise ValidationError(field, f"{value!r} must match [a-z][a-z0-9_-]{{0,31}}")
    return value


@dataclass(frozen=True, slots=True)
class Subject:
    ref: SubjectRef
    name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[SubjectRef, ...] = ()
    plan_id: str | None = None


def validate_name(name: object, field: str = "name") -> str | None:
    if name is None:
        return None
    return check_text(name, field, max_length=MAX_NAME_LENGTH, allow_empty=True)


def validate_metadata(metadata: object, field: str = "metadata") -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationError(field, "must be a JSON object")
    # PostgreSQL's jsonb cannot hold \u0000, and no encoder takes a lone surrogate.
    check_json_text(metadata, field)
    try:
        encoded = json.dumps(metadata, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, f"must be JSON-serialisable ({exc})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValidationError(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return dict(metadata)


def validate_parents(
    child: SubjectRef, parents: Iterable[object], field: str = "parents"
) -> tuple[SubjectRef, ...]:
    refs: list[SubjectRef] = []
    for i, raw in enumerate(parents):
        ref = SubjectRef.parse(raw, f"{field}[{i}]")
        if ref == child:
            raise CycleError(f"{child} cannot be its own parent", details={"field": field})
        if ref not in refs:
            refs.append(ref)
    if len(refs) > MAX_PARENTS:
        raise ValidationError(field, f"at most {MAX_PARENTS} parents")
    return tuple(refs)


def ancestors_of(
    start: SubjectRef, parents_of: Callable[[SubjectRef], Iterable[SubjectRef]]
) -> list[SubjectRef]:
    """Breadth-first ancestors, nearest first, each once; the graph is acyclic by construction."""
    seen: list[SubjectRef] = []
    frontier = list(parents_of(start))
    while frontier:
        ref = frontier.pop(0)
        if ref in seen or ref == start:
            continue
        seen.append(ref)
        if len(seen) > MAX_ANCESTORS:
            raise ValidationError(
                "parents", f"a subject may have at most {MAX_ANCESTORS} ancestors"
            )
        frontier.extend(parents_of(ref))
    return seen


def check_acyclic(
    child: SubjectRef,
    parents: Iterable[SubjectRef],
    parents_of: Callable[[SubjectRef], Iterable[SubjectRef]],
) -> None:
    """Refuse parents that already descend from ``child``: the edge would close a loop."""
    for parent in parents:
        if child in ancestors_of(parent, parents_of):
            raise CycleError(
                f"{parent} descends from {child}; making it a parent would create a cycle",
                details={"field": "parents", "parent": str(parent)},
            )


def consumer_series(resource: SubjectRef, consumer: SubjectRef) -> str:
    """The counter key of one consumer's use of a resource (contract §6 rules).

    It holds a second ':' and a '~', which no subject ref may, so it never
    collides with a subject; it is never parsed back.
    """
    return f"{resource}~{consumer}"


def consumer_ref(resource: SubjectRef, consumer: SubjectRef) -> SubjectRef:
    """A ref-shaped handle on that series, for checks and statuses (never validated)."""
    return SubjectRef(resource.kind, f"{resource.id}~{consumer}")

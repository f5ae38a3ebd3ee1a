"""Hostile text (contract §1): NUL, controls and lone surrogates are a 422 naming the field.

The same on every backend, nothing written, and the error's message and
details always encode as UTF-8 (a message that cannot be encoded was a 500).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tokenquota import Quota, ValidationError
from tokenquota.wire.catalog import encode_plan

NUL = "x\x00y"
SURROGATE = "x\ud800y"
CONTROL = "x\x1by"  # ESC
SEPARATOR = "x\u2028y"


def snapshot(quota: Quota) -> tuple[Any, ...]:
    return (
        quota.events().total,
        quota.audit().total,
        quota.list_subjects().total,
        [encode_plan(p) for p in quota.plans()],
        quota.list_keys().total,
    )


Case = tuple[str, Callable[[Quota, str], object], str]

CASES: list[Case] = [
    ("model", lambda q, s: q.consume("user:m", tokens=1, model=s), "model"),
    (
        "idempotency key",
        lambda q, s: q.consume("user:m", tokens=1, idempotency_key=s),
        "idempotency_key",
    ),
    ("tag value", lambda q, s: q.consume("user:m", tokens=1, tags={"t": s}), "tags.t"),
    ("tag name", lambda q, s: q.consume("user:m", tokens=1, tags={s: "v"}), "tags"),
    ("amounts key", lambda q, s: q.consume("user:m", {s: 1}), "amounts."),
    ("subject", lambda q, s: q.consume(f"user:{s}", tokens=1), "subject"),
    ("subject name", lambda q, s: q.put_subject("user:m", name=s), "name"),
    ("plan name", lambda q, s: q.create_plan(s, []), "name"),
    ("plan rename", lambda q, s: q.update_plan("basic", name=s), "name"),
    ("plan id", lambda q, s: q.get_plan(s), "plan_id"),
    ("assigned plan", lambda q, s: q.assign_plan("user:m", s), "plan_id"),
    ("key name", lambda q, s: q.create_key("service", name=s), "name"),
    ("revoked key id", lambda q, s: q.revoke_key(s), "id"),
    ("lease id", lambda q, s: q.heartbeat(s), "id"),
    ("reservation id", lambda q, s: q.get_reservation(s), "id"),
    ("commit id", lambda q, s: q.commit(s), "id"),
]


@pytest.mark.parametrize("text", [NUL, SURROGATE, CONTROL, SEPARATOR], ids=repr)
@pytest.mark.parametrize(("name", "call", "field"), CASES, ids=[c[0] for c in CASES])
def test_hostile_text_is_a_422_naming_the_field(
    quota: Quota, name: str, call: Callable[[Quota, str], object], field: str, text: str
) -> None:
    quota.create_plan("basic", [])
    quota.consume("user:m", tokens=1)
    before = snapshot(quota)
    with pytest.raises(ValidationError) as raised:
        call(quota, text)
    error = raised.value
    assert error.field.startswith(field), (name, error.message)
    error.message.encode()  # never echoes what cannot be encoded
    str(error.details).encode()
    assert snapshot(quota) == before


def test_metadata_keeps_layout_but_refuses_other_controls(quota: Quota) -> None:
    """Metadata is JSON: a description may span lines; other controls, NUL and surrogates not."""
    kept = quota.put_subject("user:m", metadata={"about": "line 1\r\nline 2\ttab"})
    assert kept.metadata == {"about": "line 1\r\nline 2\ttab"}
    for bad in (
        {"k\x00": 1},
        {"k": NUL},
        {"k": ["ok", SURROGATE]},
        {"k": {"deep": "\x00"}},
        {"k": "go\x1bld"},
        {"k\x85": 1},
    ):
        with pytest.raises(ValidationError) as raised:
            quota.put_subject("user:m", metadata=bad)
        assert raised.value.field.startswith("metadata")
        raised.value.message.encode()


def test_format_characters_are_kept(quota: Quota) -> None:
    """Zero-width joiners and bidi marks are how real names are written (contract §1)."""
    name = "\u05e9\u05dc\u05d5\u05dd \u200f\U0001f469\u200d\U0001f4bb"
    assert quota.put_subject("user:m", name=name).name == name
    assert quota.create_plan("plan \u00e9t\u00e9", []).name == "plan \u00e9t\u00e9"
    assert quota.consume("user:m", tokens=1, model="mod\u00e8le-\u4e2d").allowed

"""``frozen.builder`` makes the same frozen objects the classes' own constructors make."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, dataclass, replace
from datetime import UTC, datetime

import pytest

from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reading
from tokenquota.domain.frozen import builder
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
STATUS = ("user:alice", "tokens", "day", 100, "override", False, 10, 0, 90, NOW, True)


def test_a_built_status_is_a_status_in_every_respect() -> None:
    built = builder(LimitStatus)(*STATUS)
    made = LimitStatus(*STATUS)
    assert type(built) is LimitStatus
    assert built == made
    assert hash(built) == hash(made)
    assert repr(built) == repr(made)
    assert built.reason is None  # the default
    assert pickle.loads(pickle.dumps(built)) == made
    assert copy.deepcopy(built) == made
    assert replace(built, reason="limit_reached") == replace(made, reason="limit_reached")
    with pytest.raises(FrozenInstanceError):
        built.used = 11  # type: ignore[misc]
    # A name that is no field fails as it does on any instance (how depends on Python).
    for one in (built, made):
        with pytest.raises((AttributeError, TypeError)):
            one.extra = 1  # type: ignore[attr-defined]


def test_keywords_defaults_and_factories_are_the_classes() -> None:
    fields = {
        "allowed": True,
        "subject": "user:alice",
        "mode": Mode.ENFORCE,
        "amounts": {"tokens": 10},
        "timestamp": NOW,
        "limits": (LimitStatus(*STATUS),),
    }
    assert builder(Decision)(**fields) == Decision(**fields)  # type: ignore[arg-type]
    reading = builder(Reading)()
    assert reading == Reading()
    assert reading.buckets == {}
    assert reading.buckets is not builder(Reading)().buckets  # a fresh dict each time
    event = (1, SubjectRef("user", "a"), (SubjectRef("user", "a"),), NOW, NOW, Mode.RECORD)
    amounts = Amounts({Metric.TOKENS: 5})
    assert builder(Event)(*event, amounts, tags={"k": "v"}) == Event(
        *event, amounts, tags={"k": "v"}
    )
    with pytest.raises(TypeError):
        builder(LimitStatus)(*STATUS[:-1])  # a missing field is refused as by the class


def test_only_frozen_slots_dataclasses_without_post_init_are_taken() -> None:
    @dataclass(slots=True)
    class Loose:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x")

    for cls in (Loose, NoSlots, Checked):
        with pytest.raises(TypeError):
            builder(cls)

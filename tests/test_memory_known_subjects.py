"""The memory meter looks a debit's subject up only when its kept shape has not seen it
at the current configuration version (``MemoryMeter._apply``): a deleted subject is
unknown to the very next debit, even one of a plan made before the deletion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

import tokenquota
from tokenquota import FrozenClock
from tokenquota.domain.decisions import Mode
from tokenquota.domain.errors import NotFound
from tokenquota.domain.subjects import SubjectRef


def opened(*, strict: bool) -> tokenquota.Quota:
    clock = FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    quota = tokenquota.open("memory://", clock=clock, strict_subjects=strict)
    quota.put_subject("company:acme")
    quota.set_parents("user:ann", ["company:acme"])
    quota.set_limit("user:ann", "tokens", "day", 1_000)
    return quota


def test_a_deleted_subject_is_refused_then_made_again() -> None:
    strict = opened(strict=True)
    assert strict.consume("user:ann", tokens=1).allowed
    assert strict.consume("user:ann", tokens=1).allowed  # the shape has seen ann
    strict.delete_subject("user:ann")
    with pytest.raises(NotFound):
        strict.consume("user:ann", tokens=1)

    lenient = opened(strict=False)
    assert lenient.consume("user:ann", tokens=1).allowed
    lenient.delete_subject("user:ann")
    assert lenient.consume("user:ann", tokens=1).allowed
    assert lenient.get_subject("user:ann").parents == ()  # made again, bare


def test_a_plan_from_before_the_deletion_finds_the_subject_gone() -> None:
    """The same plan (its charged tuple, so its kept shape) debited across a deletion:
    without a version to refuse it, only the subject's lookup can tell."""
    quota = opened(strict=True)
    ann = SubjectRef.parse("user:ann")
    made = quota.planner.plan(ann, {"tokens": 1}, Mode.ENFORCE, None)
    plan = replace(made, config_version=None)  # checked by nobody
    assert quota.store.debit(plan, create_subject=False).allowed
    assert quota.store.debit(plan, create_subject=False).allowed
    quota.delete_subject("user:ann")
    with pytest.raises(NotFound):
        quota.store.debit(plan, create_subject=False)
    assert quota.store.debit(plan, create_subject=True).allowed
    assert quota.get_subject("user:ann").name is None  # made again by the debit

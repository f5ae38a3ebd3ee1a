"""The 63-bit bound (contract §2): a sum past 2^63 - 1 is a 422 that changes nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tokenquota import Quota, ValidationError
from tokenquota.wire.decisions import encode_limit_status
from tokenquota.wire.ledger import encode_balance, encode_event

MAX = 2**63 - 1


def used(quota: Quota, subject: str, metric: str = "tokens", window: str = "total") -> Any:
    limits = [encode_limit_status(s) for s in quota.usage(subject).limits]
    [found] = [s for s in limits if s["metric"] == metric and s["window"] == window]
    return found["used"]


def ledger(quota: Quota) -> list[dict[str, Any]]:
    page = quota.events(limit=1000)
    return [encode_event(e) for e in page.items]


def refused(call: Any, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        call()
    assert caught.value.code == "amount_too_large"
    assert caught.value.field == field
    return caught.value


def test_a_record_past_the_bound_is_refused_and_changes_nothing(quota: Quota) -> None:
    quota.put_subject("user:a", parents=["org:o"])
    quota.put_subject("user:b", parents=["org:o"])
    quota.put_subject("user:c")
    for subject in ("user:a", "org:o", "user:c"):
        quota.set_limit(subject, "tokens", "total", -1)
    assert quota.consume("user:c", tokens=MAX, mode="record").allowed
    before = ledger(quota)
    refused(lambda: quota.consume("user:c", tokens=MAX, mode="record"), "amounts.tokens")
    refused(lambda: quota.consume("user:c", tokens=1), "amounts.tokens")
    assert ledger(quota) == before
    assert used(quota, "user:c") == MAX  # an integer, never a float string
    # Below a parent: the second half of the parent's 63 bits is refused, and
    # the sibling goes on using what is left of them.
    half = 2**62
    assert quota.consume("user:a", tokens=half, mode="record").allowed
    refused(lambda: quota.consume("user:a", tokens=half, mode="record"), "amounts.tokens")
    assert quota.consume("user:b", tokens=1000).allowed
    assert used(quota, "org:o") == half + 1000
    assert used(quota, "user:a") == half
    # Nothing is left broken: rebuild, and a new limit's backfill, both work.
    quota.rebuild()
    assert used(quota, "user:c") == MAX
    assert used(quota, "org:o") == half + 1000
    quota.set_limit("user:c", "tokens", "day", -1)
    assert used(quota, "user:c", window="day") == MAX
    quota.set_limit("org:o", "requests", "month", 100)
    assert used(quota, "org:o", "requests", "month") == 2


def test_a_parent_at_the_bound_refuses_that_metric_only(quota: Quota) -> None:
    quota.put_subject("user:a", parents=["org:o"])
    quota.put_subject("user:b", parents=["org:o"])
    assert quota.consume("user:a", tokens=MAX, mode="record").allowed
    error = refused(lambda: quota.consume("user:b", tokens=1), "amounts.tokens")
    assert error.details["series"] == "org:o"
    assert quota.consume("user:b", requests=1, input_tokens=0).allowed  # no tokens: fits


def test_a_grant_past_the_bound_is_refused_and_changes_nothing(quota: Quota) -> None:
    quota.grant("workspace:w", "9223372036")  # 9223372036e9 units of 2^63 - 1
    refused(lambda: quota.grant("workspace:w", "0.854775808"), "credits")
    assert len(quota.grants("workspace:w")) == 1
    quota.grant("workspace:w", "0.854775807")  # exactly the bound
    refused(lambda: quota.grant("workspace:w", "0.000000001"), "credits")
    balance = quota.balance("workspace:w")
    assert balance is not None
    assert encode_balance(balance)["remaining"] == "9223372036.854775807"
    assert quota.consume("workspace:w", credits="1").allowed
    # Spent credits stay counted: the bound is on everything ever granted.
    refused(lambda: quota.grant("workspace:w", "1"), "credits")
    quota.rebuild()
    refused(lambda: quota.grant("workspace:w", "1"), "credits")
    assert encode_balance(quota.balance("workspace:w"))["remaining"] == "9223372035.854775807"  # type: ignore[arg-type]
    assert quota.grant("workspace:other", "5").amount == 5 * 10**9  # others are unaffected


def test_racing_records_store_exactly_the_ones_that_fit(quota: Quota) -> None:
    quota.set_limit("user:r", "tokens", "total", -1)
    step = 2**60  # seven fit under 2^63 - 1 after the first, eight do not
    assert quota.consume("user:r", tokens=step - 1, mode="record").allowed
    outcomes: list[str] = []
    lock = threading.Lock()

    def record() -> None:
        try:
            quota.consume("user:r", tokens=step, mode="record")
            result = "ok"
        except ValidationError as exc:
            result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=record) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["amount_too_large"] * 3 + ["ok"] * 7
    assert used(quota, "user:r") == 8 * step - 1 == MAX
    assert len(ledger(quota)) == 8


@pytest.mark.parametrize("bad", [True, None])
def test_booleans_and_nulls_are_not_amounts(quota: Quota, bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        quota.consume("user:x", {"tokens": bad}, mode="record")
    assert caught.value.field == "amounts.tokens"
    with pytest.raises(ValidationError) as caught:
        quota.grant("user:x", bad)
    assert caught.value.field == "credits"
    assert ledger(quota) == []

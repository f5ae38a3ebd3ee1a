"""The 63-bit bound in step.lua when an admitted step learns it from its own writes.

An admitted step adds its lifetime counters with HINCRBY and learns the
bound from Redis refusing one (taking back the ones it added before); a
refused step reads them first. The conformance suite's overflow tests cover
the admitted side on every backend; these cover the order of the two answers
on Redis: past the bound is a 422 before a limit's refusal, as on the other
backends (``check_lifetime`` comes before ``decide``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tokenquota
from tokenquota import Quota, ValidationError

MAX = 2**63 - 1


@pytest.fixture(params=["redis", "cluster"])
def quota(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[Quota]:
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    with tokenquota.open(postgres_url, redis=redis) as opened:
        yield opened


def test_past_the_bound_is_refused_before_a_limit_refuses(quota: Quota) -> None:
    quota.set_limit("user:d", "tokens", "day", 5)
    assert quota.consume("user:d", tokens=MAX, mode="record").allowed  # far past the day's 5
    with pytest.raises(ValidationError) as caught:
        quota.consume("user:d", tokens=1)  # refused by the day, and past the bound
    assert caught.value.code == "amount_too_large"
    assert not quota.consume("user:d", requests=1, input_tokens=0).allowed  # the day only


def test_an_admitted_step_past_the_bound_takes_back_what_it_added(quota: Quota) -> None:
    # On a cluster user:f's slot (8) comes before org:p's (6410): its step has run
    # and is undone when org:p's refuses.
    quota.put_subject("user:f", parents=["org:p"])
    quota.set_limit("user:f", "tokens", "total", -1)
    quota.set_limit("org:p", "tokens", "total", -1)
    assert quota.consume("org:p", tokens=MAX - 10, mode="record").allowed
    assert quota.consume("user:f", tokens=4).allowed
    with pytest.raises(ValidationError) as caught:
        quota.consume("user:f", tokens=7)  # user:f fits, org:p does not
    assert caught.value.details["series"] == "org:p"
    used = {s.subject: s.used for s in quota.usage("user:f", include_ancestors=True).limits}
    assert used == {"user:f": 4, "org:p": MAX - 6}

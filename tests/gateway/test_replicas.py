"""64 streamed chat calls at once, from many users of one company, across 3 replicas.

Three real ``tokenquota serve --upstream`` processes share one store; the
company's token budget is far smaller than what 64 calls would take. Each call
reserves its prompt plus ``max_tokens`` before it is forwarded, so the company
never spends past its budget (the documented bound is zero with reservations
sized by ``max_tokens``); what it spent equals, to the token, the usage the
upstream reported to the calls that were admitted; and once every stream has
ended nothing is held, neither tokens nor concurrency slots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import openai
import pytest

import tokenquota
from tests.gateway.conftest import Served
from tests.gateway.test_sdk import MESSAGES
from tests.replicas import ADMIN_KEY, Fleet

pytestmark = pytest.mark.slow

REPLICAS = 3
CALLS = 64
USERS = 16
COMPANY = "company:acme"
BUDGET = 1_000  # tokens a day; each call holds about 40 and spends about 35
JOIN_TIMEOUT_SECONDS = 300.0


@pytest.fixture(params=["postgres", "redis"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    args = ["--db", request.getfixturevalue("postgres_url")]
    if request.param == "redis":
        args += ["--redis", request.getfixturevalue("redis_url")]
    return args


def test_a_company_budget_holds_across_replicas(
    fleet: Fleet, store_args: list[str], serve_upstream: Callable[..., Served]
) -> None:
    served = serve_upstream(chunk_delay=0.01)
    db = store_args[1]
    redis = store_args[3] if len(store_args) > 2 else None
    with tokenquota.open(db, redis=redis) as quota:
        quota.put_subject(COMPANY)
        quota.set_limits(
            COMPANY,
            [
                {"metric": "tokens", "window": "day", "limit": BUDGET},
                {"metric": "concurrent_requests", "window": None, "limit": CALLS},
            ],
        )
        for i in range(USERS):
            quota.put_subject(f"user:u{i}", parents=[COMPANY])
    replicas = fleet.start(REPLICAS, [*store_args, "--upstream", f"local={served.url}"])
    barrier = threading.Barrier(CALLS)
    reported: list[int] = []
    refused: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        replica = replicas[n % REPLICAS]
        with openai.OpenAI(
            base_url=f"{replica.url}/openai/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120
        ) as sdk:
            barrier.wait(timeout=120)
            try:
                stream = sdk.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    max_tokens=20,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={"X-TokenQuota-Subject": f"user:u{n % USERS}"},
                )
                usage = [c.usage for c in stream if c.usage is not None]
                with lock:
                    reported.append(usage[0].total_tokens)
            except openai.RateLimitError:
                with lock:
                    refused.append(n)
            except BaseException as exc:
                with lock:
                    failures.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_SECONDS)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert len(reported) + len(refused) == CALLS
    assert refused, "the budget should have refused some calls"
    assert len(reported) >= BUDGET // 50, "the budget should have admitted many"

    with tokenquota.open(db, redis=redis) as quota:
        statuses: dict[Any, Any] = {(s.metric, s.window): s for s in quota.usage(COMPANY).limits}
        tokens_day = statuses[("tokens", "day")]
        assert tokens_day.used <= BUDGET
        assert tokens_day.used == sum(reported)
        assert tokens_day.reserved == 0
        assert statuses[("concurrent_requests", None)].used == 0
        usage_events = [e for e in quota.iter_events(subject=COMPANY) if e.is_usage]
        assert len(usage_events) == len(reported)

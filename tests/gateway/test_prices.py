"""Money: a month of mixed-model traffic costs exactly the price table applied to the usage.

The clock is frozen and moved a few hours at a time through March, across a price
change (gpt-4o's version 2 applies from the 15th). Every call's usage is what the
test upstream reported to the SDK; the credits expected are computed here from
the table, in exact decimals, and must equal the ledger's and the month's counter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.gateway.conftest import GatewayFactory
from tests.gateway.ledger import amounts, events
from tests.gateway.test_sdk import MESSAGES, USER, member
from tokenquota import FrozenClock
from tokenquota.domain.prices import TAG_INPUT, TAG_OUTPUT, TAG_VERSION

START = datetime(2026, 3, 1, tzinfo=UTC)
CHANGE = datetime(2026, 3, 15, tzinfo=UTC)
PRICES: list[dict[str, Any]] = [
    {"model": "gpt-4o-mini", "input_per_million": "0.15", "output_per_million": "0.6"},
    {"model": "gpt-4o", "input_per_million": "2.5", "output_per_million": "10", "version": "1"},
    {
        "model": "gpt-4o",
        "input_per_million": "2.125",
        "output_per_million": "8.333",
        "version": "2",
        "since": CHANGE.isoformat(),
    },
    # A bare-named model of another family, priced under its upstream's name.
    {"model": "local/llama-3-8b", "input_per_million": "0.1", "output_per_million": "0.2"},
    {"model": "text-embedding-3-small", "input_per_million": "0.02", "output_per_million": "0"},
]
TABLE = {
    ("gpt-4o-mini", False): (Decimal("0.15"), Decimal("0.6"), "1"),
    ("gpt-4o", False): (Decimal("2.5"), Decimal("10"), "1"),
    ("gpt-4o", True): (Decimal("2.125"), Decimal("8.333"), "2"),
    ("llama-3-8b", False): (Decimal("0.1"), Decimal("0.2"), "1"),
    ("llama-3-8b", True): (Decimal("0.1"), Decimal("0.2"), "1"),
    ("text-embedding-3-small", False): (Decimal("0.02"), Decimal("0"), "1"),
}


def price(model: str, when: datetime) -> tuple[Decimal, Decimal, str]:
    changed = when >= CHANGE
    return TABLE.get((model, changed)) or TABLE[(model, False)]


def test_a_month_of_mixed_traffic_costs_the_table_exactly(make_gateway: GatewayFactory) -> None:
    clock = FrozenClock(START)
    gateway = make_gateway(clock=clock, prices=PRICES)
    sdk = gateway.sdk(member(gateway))
    gateway.quota.set_limit(USER, "credits", "month", 1_000)
    expected = Decimal(0)
    calls = 0
    end = datetime(2026, 4, 1, tzinfo=UTC)
    while True:
        model = ("gpt-4o-mini", "gpt-4o", "llama-3-8b", "text-embedding-3-small")[calls % 4]
        gateway.upstream.output_tokens = 3 + calls % 17
        if model == "text-embedding-3-small":
            answer = sdk.embeddings.create(model=model, input=["day", str(calls)])
            used_in, used_out = answer.usage.prompt_tokens, 0
        elif calls % 3 == 0:
            stream = sdk.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_tokens=20,
                stream=True,
                stream_options={"include_usage": True},
            )
            (usage,) = [c.usage for c in stream if c.usage is not None]
            used_in, used_out = usage.prompt_tokens, usage.completion_tokens
        else:
            chat = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20)
            assert chat.usage is not None
            used_in, used_out = chat.usage.prompt_tokens, chat.usage.completion_tokens
        per_in, per_out, _ = price(model, clock.now())
        expected += (used_in * per_in + used_out * per_out) / Decimal(1_000_000)
        calls += 1
        if clock.now() + timedelta(hours=7) >= end:
            break  # the last hours of March
        clock.advance(timedelta(hours=7))
    assert calls > 100
    found = events(gateway.quota, USER)
    assert len(found) == calls
    assert sum(Decimal(amounts(e)["credits"]) for e in found) == expected
    month = [
        s.used
        for s in gateway.quota.usage(USER).limits
        if s.metric == "credits" and s.window == "month"
    ]
    assert month == [expected]
    for event in found:
        per_in, per_out, version = price(event.model or "", event.timestamp)
        assert (event.tags[TAG_VERSION], event.tags[TAG_INPUT], event.tags[TAG_OUTPUT]) == (
            version,
            str(per_in),
            str(per_out),
        )
        counted = amounts(event)
        assert Decimal(counted["credits"]) == (
            counted["input_tokens"] * per_in + counted.get("output_tokens", 0) * per_out
        ) / Decimal(1_000_000)
    history = gateway.quota.history(USER, start=START, end=end, granularity="month")
    assert [p.value for p in history if p.metric == "credits"] == [expected]

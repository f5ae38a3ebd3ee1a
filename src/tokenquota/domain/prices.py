"""Money: a price table per model turns usage into ``credits`` (contract §2).

Prices are configuration (``[[prices]]`` in the TOML file), in credits per
million tokens, exact decimals with at most three places, so that one token's
price fits the nine places credits are counted in and every charge is exact.
A model may have several rows: each names a ``version`` and the moment it
applies ``since``; a call is charged by the row in force when it is committed,
and that row's version and prices go on the ledger event as tags (``TAGS``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

MILLION: Final = Decimal(1_000_000)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The tags a priced call's ledger event carries.
TAG_VERSION: Final = "price.version"
TAG_INPUT: Final = "price.input_per_million"
TAG_OUTPUT: Final = "price.output_per_million"
TAG_UPSTREAM: Final = "gateway.upstream"


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    version: str
    since: datetime

    def credits(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact: three places per million is nine per token, the places credits keep."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / MILLION

    def tags(self) -> dict[str, str]:
        return {
            TAG_VERSION: self.version,
            TAG_INPUT: str(self.input_per_million),
            TAG_OUTPUT: str(self.output_per_million),
        }


class PriceTable:
    """Every configured price, by model, newest ``since`` first."""

    def __init__(self, rows: Iterable[Any]) -> None:
        by_model: dict[str, list[Price]] = {}
        for row in rows:
            since = row.since or _EPOCH
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            price = Price(
                row.model, row.input_per_million, row.output_per_million, row.version, since
            )
            by_model.setdefault(row.model, []).append(price)
        self._by_model = {
            model: sorted(prices, key=lambda p: p.since, reverse=True)
            for model, prices in by_model.items()
        }

    def __bool__(self) -> bool:
        return bool(self._by_model)

    def at(self, names: Iterable[str], when: datetime) -> Price | None:
        """The price in force at ``when`` for the first of ``names`` that has one."""
        for name in names:
            for price in self._by_model.get(name, ()):
                if price.since <= when:
                    return price
        return None

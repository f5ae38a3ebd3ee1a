"""Amounts: numbers in each metric's own unit, credits as decimal strings."""

from __future__ import annotations

from typing import Any

from tokenquota.domain.metrics import Amounts, Metric, from_units, to_units, wire_number


def encode_amounts(amounts: Amounts) -> dict[str, int | str | None]:
    return {m.value: wire_number(from_units(m, amounts[m])) for m in amounts}


def decode_amounts(data: Any) -> Amounts:
    """Back to units, as the engine keeps them."""
    units = {}
    for name, value in data.items():
        metric = Metric(name)
        units[metric] = to_units(metric, value, f"amounts.{name}")
    return Amounts(units)

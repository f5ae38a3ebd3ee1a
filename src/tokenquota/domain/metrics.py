"""Metrics and amounts (contract §2).

Internally every amount is a non-negative integer of *units*: one unit is one
token or one request, and one billionth of a credit. Integer units keep credit
arithmetic exact on every backend (SQL integers, Redis INCRBY) and make the
63-bit bound one check instead of two.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

from tokenquota.domain.errors import ValidationError

MAX_UNITS: Final = 2**63 - 1
CREDIT_PLACES: Final = 9
CREDIT_SCALE: Final = 10**CREDIT_PLACES
# Exact decimal arithmetic for validation: nothing is rounded, nothing overflows.
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])


class Metric(StrEnum):
    TOKENS = "tokens"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    REQUESTS = "requests"
    CREDITS = "credits"
    CONCURRENT_REQUESTS = "concurrent_requests"
    INPUT_SEQUENCE_LENGTH = "input_sequence_length"

    @property
    def is_counter(self) -> bool:
        """Counters are summed over windows; the other two are checked per request or lease."""
        return self not in WINDOWLESS

    @property
    def is_decimal(self) -> bool:
        return self is Metric.CREDITS


WINDOWLESS: Final = frozenset({Metric.CONCURRENT_REQUESTS, Metric.INPUT_SEQUENCE_LENGTH})
COUNTERS: Final = tuple(m for m in Metric if m not in WINDOWLESS)
# Metrics a caller may put in a consume; concurrency is counted by leases and
# input_sequence_length is a cap measured on input_tokens.
CONSUMABLE: Final = COUNTERS
_CONSUMABLE: Final = frozenset(CONSUMABLE)

Number = int | Decimal


# Metric(x) goes through the enum machinery in Python; a dict lookup does not.
_BY_VALUE: Final = {m.value: m for m in Metric}
_CREDITS: Final = Metric.CREDITS  # compared by identity on the hot path


def parse_metric(value: object, field: str = "metric") -> Metric:
    metric = _BY_VALUE.get(str(value))
    if metric is None:
        allowed = ", ".join(m.value for m in Metric)
        raise ValidationError(field, f"unknown metric {value!r}; expected one of {allowed}")
    return metric


def to_units(metric: Metric, value: object, field: str) -> int:
    """Turn a caller's number into units, refusing anything inexact, negative or too big."""
    if value is None:
        # An explicit null is not "nothing": refusing it keeps a typo'd field
        # from being recorded as an event with nothing in it.
        raise ValidationError(field, "must be a number, not null")
    if type(value) is int:
        # A plain int is exact as it is: the checks below, without a Decimal.
        units = value * CREDIT_SCALE if metric is Metric.CREDITS else value
        if units < 0:
            raise ValidationError(field, "must not be negative")
        if units > MAX_UNITS:
            raise ValidationError(field, "is too large (must fit in 63 bits)")
        return units
    if isinstance(value, bool):
        raise ValidationError(field, "must be a number, not a boolean")
    number = parse_decimal(value, field)  # exact, finite; Decimal(int) never rounds
    if metric.is_decimal:
        # scaleb in the exact context: the default one keeps 28 digits and would
        # round 1.0000000000000000000000000001 to a whole number of units.
        number = number.scaleb(CREDIT_PLACES, _EXACT)
    if number < 0:
        raise ValidationError(field, "must not be negative")
    # The bound comes before int(): int(Decimal("1e999999")) takes seconds.
    if number > MAX_UNITS:
        raise ValidationError(field, "is too large (must fit in 63 bits)")
    if number != number.to_integral_value(context=_EXACT):
        if metric.is_decimal:
            raise ValidationError(field, f"credits carry at most {CREDIT_PLACES} decimal places")
        raise ValidationError(field, "must be a whole number")
    return int(number)


def from_units(metric: Metric, units: int) -> Number:
    if metric is Metric.CREDITS:  # is_decimal, without the property call
        whole, frac = divmod(units, CREDIT_SCALE)
        if not frac:
            return Decimal(whole)
        # Exact, with no trailing zeros and never in exponent form (2000, not 2E+3).
        return Decimal(f"{whole}.{frac:09d}".rstrip("0"))
    return units


def wire_number(value: Number | None) -> int | str | None:
    """Credits travel as strings so no JSON parser turns them into floats."""
    if value is None or isinstance(value, int):
        return value
    return format(value, "f")


def parse_decimal(value: object, field: str) -> Decimal:
    """An exact, finite decimal from an int, str, Decimal or float (read by its repr)."""
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, int | str | Decimal):
            number = Decimal(value)
        else:
            raise ValidationError(field, f"must be a number, got {type(value).__name__}")
    except InvalidOperation:
        raise ValidationError(field, f"is not a number: {value!r}") from None
    if not number.is_finite():
        raise ValidationError(field, "must be a finite number")
    return number


def merge_amounts(
    amounts: Mapping[str, object] | None, extra: Mapping[str, object]
) -> dict[str, object]:
    """Join ``amounts={...}`` and keyword amounts (``tokens=5``); a metric twice is an error."""
    if amounts is not None and not isinstance(amounts, Mapping):
        raise ValidationError("amounts", "must be an object of metric: amount")
    merged = dict(amounts or {})
    for name, value in extra.items():
        if name in merged:
            raise ValidationError(f"amounts.{name}", "given twice")
        merged[name] = value
    return merged


class Amounts(Mapping[Metric, int]):
    """What one request spends, in units, with ``tokens`` and ``requests`` filled in."""

    __slots__ = ("_units",)

    def __init__(self, units: Mapping[Metric, int]) -> None:
        self._units = {m: u for m, u in units.items() if u}

    @classmethod
    def parse(
        cls, values: Mapping[str, object], *, field: str = "amounts", default_requests: int = 1
    ) -> Amounts:
        """Validate a caller's amounts.

        ``tokens`` defaults to input + output tokens when only those are given, and
        ``requests`` to ``default_requests``: each call is a request unless it says not.
        A service names one of a few shapes (``{"tokens": n}``) on every call, so
        amounts of a known shape of plain ints are taken as they are (``_plain``,
        a consume's hot path); everything else goes through ``parse_each``.
        """
        if default_requests == 1:
            # ``_plain``, in line: a consume's hot path, one call rather than three.
            names = tuple(values)
            metrics = _AMOUNT_NAMES.get(names, _UNKNOWN)
            if metrics is _UNKNOWN:
                metrics = _amount_names(names)
            if metrics is not None:
                # No strict=: zip called with a keyword costs as much as this loop;
                # a length that differs is caught below.
                units: dict[Metric, int] = {}
                for metric, value in zip(metrics, values.values()):  # noqa: B905
                    if type(value) is not int or not 0 < value <= MAX_UNITS:
                        break
                    units[metric] = value
                else:
                    if len(units) != len(names):  # the caller's mapping changed meanwhile
                        return cls.parse_each(values, field=field)
                    if _REQUESTS not in units:
                        units[_REQUESTS] = 1
                    made = _new_amounts(cls)
                    made._units = units
                    return made
                plain = _plain(values)  # a zero, or a value that is no plain int
                if plain is not None:
                    return plain
        return cls.parse_each(values, field=field, default_requests=default_requests)

    @classmethod
    def parse_each(
        cls, values: Mapping[str, object], *, field: str = "amounts", default_requests: int = 1
    ) -> Amounts:
        """``parse``, name by name: what the quick path must answer alike."""
        units: dict[Metric, int] = {}
        for name, raw in values.items():
            # The field's name is only built when it is needed: for the error.
            metric = _BY_VALUE.get(str(name)) or parse_metric(name, f"{field}.{name}")
            if metric not in _CONSUMABLE:
                raise ValidationError(
                    f"{field}.{name}",
                    "is not consumed directly"
                    + (
                        " (it is counted by leases)"
                        if metric is Metric.CONCURRENT_REQUESTS
                        else " (it is a cap on input_tokens)"
                    ),
                )
            units[metric] = to_units(metric, raw, f"{field}.{name}")
        if Metric.TOKENS not in units and (
            Metric.INPUT_TOKENS in units or Metric.OUTPUT_TOKENS in units
        ):
            total = units.get(Metric.INPUT_TOKENS, 0) + units.get(Metric.OUTPUT_TOKENS, 0)
            if total > MAX_UNITS:
                raise ValidationError(f"{field}.tokens", "is too large (must fit in 63 bits)")
            units[Metric.TOKENS] = total
        units.setdefault(Metric.REQUESTS, default_requests)
        return cls(units)

    @classmethod
    def of_units(cls, units: dict[Metric, int]) -> Amounts:
        """``Amounts(units)`` for a dict of the caller's own with no zero units: kept as it
        is, without the copy that drops zeros (``_plain``)."""
        made = cls.__new__(cls)
        made._units = units
        return made

    def units(self) -> Mapping[Metric, int]:
        """Metric -> units, absent when 0: the one dict, to read (``get``) without
        ``__getitem__``'s Python call per metric. Never change it."""
        return self._units

    # The views of the one dict, instead of Mapping's generic ones, which call
    # __getitem__ per key in Python. Same keys, values and order.
    def keys(self) -> KeysView[Metric]:
        return self._units.keys()

    def items(self) -> ItemsView[Metric, int]:
        return self._units.items()

    def values(self) -> ValuesView[int]:
        return self._units.values()

    def __getitem__(self, metric: Metric) -> int:
        return self._units.get(metric, 0)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, metric: object) -> bool:
        # Mapping's default asks __getitem__, which answers 0 for every absent metric.
        return metric in self._units

    def __repr__(self) -> str:
        return f"Amounts({ {m.value: u for m, u in self._units.items()} })"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Amounts):
            return self._units == other._units
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._units.items()))

    def to_numbers(self) -> dict[str, Number]:
        """Metric name -> number, credits as a ``Decimal``: what a decision reports.

        A loop, not a comprehension: in 3.11 a comprehension is a call of its
        own, and every admitted consume builds this dict.
        """
        numbers: dict[str, Number] = {}
        if _CREDITS in self._units:
            for metric, units in self._units.items():
                numbers[metric._value_] = from_units(metric, units)
            return numbers
        for metric, units in self._units.items():
            numbers[metric._value_] = units
        return numbers

    def to_units_json(self) -> dict[str, int]:
        return {m._value_: u for m, u in self._units.items()}

    @classmethod
    def from_units_json(cls, data: Mapping[str, int]) -> Amounts:
        return cls({Metric(k): int(v) for k, v in data.items()})


# What a caller's amount names mean, by the tuple of names (in their order):
# the metrics, when each is a counter a consume may carry other than credits
# and ``tokens`` needs no filling in from input and output tokens; else None.
# A service's calls name one of a few shapes ({"tokens": n}), whatever n is.
_AMOUNT_NAMES: dict[tuple[object, ...], tuple[Metric, ...] | None] = {}
_MAX_AMOUNT_NAMES: Final = 1_024
_PLAIN: Final = frozenset(m for m in _CONSUMABLE if m is not Metric.CREDITS)
_REQUESTS: Final = Metric.REQUESTS


def _plain(raw: Mapping[str, object]) -> Amounts | None:
    """``Amounts.parse(raw)`` when it is quick to tell, else None (then ``parse_each``).

    For names of a known shape (``_AMOUNT_NAMES``) whose values are all plain
    ints within 0 to 2^63 - 1, the units are the values themselves
    (``metrics.to_units``), in the caller's order, then ``requests`` = 1 when
    not given: what ``Amounts.parse`` builds, without its per-name lookups.
    Anything else (a bool, a float, a Decimal, a string, a negative or too
    large number, credits, a name of no metric) is None: ``parse_each`` takes
    it and names the field in its error.
    """
    names = tuple(raw)
    metrics = _AMOUNT_NAMES.get(names, _UNKNOWN)
    if metrics is _UNKNOWN:
        metrics = _amount_names(names)
    if metrics is None:
        return None
    units: dict[Metric, int] = {}
    zero = False
    for metric, value in zip(metrics, raw.values(), strict=True):
        if type(value) is not int or value < 0 or value > MAX_UNITS:
            return None
        units[metric] = value
        if not value:
            zero = True
    if _REQUESTS not in units:
        units[_REQUESTS] = 1
    return Amounts(units) if zero else Amounts.of_units(units)  # a zero is left out


_UNKNOWN: Final[Any] = object()
_new_amounts: Final = object.__new__  # an Amounts without __init__: its one slot set after


def _amount_names(names: tuple[object, ...]) -> tuple[Metric, ...] | None:
    """The metrics ``names`` stand for if ``_plain`` may take them as they are."""
    metrics = tuple(_BY_VALUE.get(name) for name in names if type(name) is str)
    simple = (
        len(metrics) == len(names)
        and all(m in _PLAIN for m in metrics)
        and (
            Metric.TOKENS in metrics
            or (Metric.INPUT_TOKENS not in metrics and Metric.OUTPUT_TOKENS not in metrics)
        )
    )
    found = tuple(m for m in metrics if m is not None) if simple else None
    if len(_AMOUNT_NAMES) >= _MAX_AMOUNT_NAMES:
        _AMOUNT_NAMES.clear()  # many shapes: start afresh rather than grow
    _AMOUNT_NAMES[names] = found
    return found

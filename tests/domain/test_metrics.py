"""Metrics and amounts (contract §2): validation, defaults and exact units."""

from __future__ import annotations

import tracemalloc
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota import ValidationError
from tokenquota.domain.metrics import (
    CONSUMABLE,
    COUNTERS,
    CREDIT_PLACES,
    CREDIT_SCALE,
    MAX_UNITS,
    WINDOWLESS,
    Amounts,
    Metric,
    from_units,
    parse_metric,
    to_units,
    wire_number,
)
from tokenquota.wire.metrics import encode_amounts

INTEGER_METRICS = [Metric.TOKENS, Metric.INPUT_TOKENS, Metric.OUTPUT_TOKENS, Metric.REQUESTS]
MAX_CREDITS = Decimal(MAX_UNITS) / CREDIT_SCALE  # 9223372036.854775807


def test_metric_kinds() -> None:
    assert {m.value for m in Metric} == {
        "tokens",
        "input_tokens",
        "output_tokens",
        "requests",
        "credits",
        "concurrent_requests",
        "input_sequence_length",
    }
    assert frozenset({Metric.CONCURRENT_REQUESTS, Metric.INPUT_SEQUENCE_LENGTH}) == WINDOWLESS
    assert set(COUNTERS) == set(Metric) - WINDOWLESS
    assert set(CONSUMABLE) == set(COUNTERS)
    assert [m for m in Metric if m.is_decimal] == [Metric.CREDITS]
    assert not Metric.CONCURRENT_REQUESTS.is_counter
    assert Metric.TOKENS.is_counter


def test_parse_metric() -> None:
    assert parse_metric("credits") is Metric.CREDITS
    assert parse_metric(Metric.TOKENS) is Metric.TOKENS
    for bad in ["Tokens", "token", "", " tokens", None, 1]:
        with pytest.raises(ValidationError) as info:
            parse_metric(bad, "limits[0].metric")
        assert info.value.field == "limits[0].metric"


# ---------------------------------------------------------------------------
# Amounts.parse: defaults
# ---------------------------------------------------------------------------


def test_tokens_is_input_plus_output_when_only_those_are_given() -> None:
    amounts = Amounts.parse({"input_tokens": 1200, "output_tokens": 300})
    assert amounts[Metric.TOKENS] == 1500
    assert amounts[Metric.INPUT_TOKENS] == 1200
    assert amounts[Metric.OUTPUT_TOKENS] == 300
    assert amounts[Metric.REQUESTS] == 1
    assert encode_amounts(amounts) == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "tokens": 1500,
        "requests": 1,
    }
    assert amounts.to_numbers() == encode_amounts(amounts)


def test_tokens_from_input_alone_or_output_alone() -> None:
    assert Amounts.parse({"input_tokens": 7})[Metric.TOKENS] == 7
    assert Amounts.parse({"output_tokens": 9})[Metric.TOKENS] == 9
    assert Amounts.parse({"input_tokens": 0, "output_tokens": 0})[Metric.TOKENS] == 0


def test_explicit_tokens_win_over_the_sum() -> None:
    amounts = Amounts.parse({"tokens": 50, "input_tokens": 10, "output_tokens": 20})
    assert amounts[Metric.TOKENS] == 50


def test_tokens_alone_is_not_split() -> None:
    amounts = Amounts.parse({"tokens": 50})
    assert amounts[Metric.TOKENS] == 50
    assert amounts[Metric.INPUT_TOKENS] == 0
    assert set(amounts) == {Metric.TOKENS, Metric.REQUESTS}


def test_requests_default_to_one() -> None:
    assert Amounts.parse({})[Metric.REQUESTS] == 1
    assert Amounts.parse({"tokens": 5})[Metric.REQUESTS] == 1
    assert Amounts.parse({"requests": 3})[Metric.REQUESTS] == 3
    # "unless the call says otherwise": an explicit 0 is kept.
    zero = Amounts.parse({"requests": 0, "tokens": 5})
    assert zero[Metric.REQUESTS] == 0
    assert set(zero) == {Metric.TOKENS}
    assert Amounts.parse({"tokens": 5}, default_requests=0)[Metric.REQUESTS] == 0
    assert Amounts.parse({}, default_requests=2)[Metric.REQUESTS] == 2


def test_null_and_boolean_amounts_are_refused_naming_the_field() -> None:
    for bad in (None, True, False):
        for name in ("tokens", "requests", "credits"):
            with pytest.raises(ValidationError) as caught:
                Amounts.parse({name: bad, "input_tokens": 4})
            assert caught.value.field == f"amounts.{name}"


def test_absent_metrics_are_not_in_amounts() -> None:
    """``amounts[m]`` is 0 for an absent metric, but ``in`` must agree with iteration."""
    amounts = Amounts.parse({"tokens": 50, "requests": 0})
    assert list(amounts) == [Metric.TOKENS]
    assert Metric.TOKENS in amounts
    assert Metric.INPUT_TOKENS not in amounts
    assert Metric.REQUESTS not in amounts
    assert Metric.CREDITS not in amounts
    assert amounts[Metric.CREDITS] == 0


def test_amounts_is_a_mapping_without_zeros() -> None:
    amounts = Amounts.parse({"tokens": 0, "credits": "0.5"})
    assert dict(amounts) == {Metric.CREDITS: 500_000_000, Metric.REQUESTS: 1}
    assert len(amounts) == 2
    assert amounts[Metric.TOKENS] == 0
    assert amounts == Amounts({Metric.CREDITS: 500_000_000, Metric.REQUESTS: 1, Metric.TOKENS: 0})
    assert hash(amounts) == hash(Amounts({Metric.REQUESTS: 1, Metric.CREDITS: 500_000_000}))


# ---------------------------------------------------------------------------
# Credits: exact decimals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "units"),
    [
        (Decimal("0.000000001"), 1),
        (Decimal("1.5"), 1_500_000_000),
        (Decimal("1.000000000"), 1_000_000_000),
        (Decimal("0"), 0),
        ("0.000000001", 1),
        ("1e-9", 1),
        ("123.456789012", 123_456_789_012),
        ("2", 2_000_000_000),
        (" 2.5 ", 2_500_000_000),
        (2, 2_000_000_000),
        (0, 0),
        (0.1, 100_000_000),  # the float's shortest repr, not its binary expansion
        (0.25, 250_000_000),
        (1e-9, 1),
        (1234.123456789, 1_234_123_456_789),
        (Decimal("9223372036.854775807"), MAX_UNITS),
        (str(MAX_CREDITS), MAX_UNITS),
    ],
)
def test_credits_are_exact(value: object, units: int) -> None:
    assert to_units(Metric.CREDITS, value, "amounts.credits") == units
    amounts = Amounts.parse({"credits": value})
    assert amounts[Metric.CREDITS] == units
    number = amounts.to_numbers().get("credits", Decimal(0))
    assert isinstance(number, Decimal)
    assert number == Decimal(str(value).strip())
    # On the wire credits are strings, so no JSON parser turns them into floats.
    wire = encode_amounts(amounts).get("credits", "0")
    assert isinstance(wire, str)
    assert Decimal(wire) == number


@pytest.mark.parametrize(
    "value",
    [
        "0.0000000001",
        Decimal("1.0000000001"),
        Decimal("0.0000000005"),
        "1e-10",
        1e-10,
        0.1 + 0.2,  # 0.30000000000000004 has 17 places
        1 / 3,
    ],
)
def test_credits_with_more_than_9_places_are_rejected(value: object) -> None:
    assert CREDIT_PLACES == 9
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"credits": value})
    assert info.value.field == "amounts.credits"


@pytest.mark.parametrize(
    "value",
    [
        # More significant digits than the default decimal context (28) holds:
        # scaling by 10**9 must not round the excess places away.
        Decimal("1.0000000000000000000000000001"),
        "1.0000000000000000000000000001",
        "0.000000001000000000000000000000000000001",
        "9223372036.8547758070000000000000000001",
    ],
)
def test_credits_are_checked_exactly_beyond_the_decimal_context_precision(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        to_units(Metric.CREDITS, value, "amounts.credits")
    assert info.value.field == "amounts.credits"


@pytest.mark.parametrize(
    "value", ["1e999999", Decimal("1e999999"), "1E+999999999", "-1e999999", "1e-999999999"]
)
def test_credits_beyond_the_decimal_context_range_are_rejected(value: object) -> None:
    """Scaling by 10**9 must not overflow the decimal context (decimal.Overflow is a 500)."""
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"credits": value})
    assert info.value.field == "amounts.credits"


@pytest.mark.parametrize("metric", [Metric.TOKENS, Metric.CREDITS], ids=str)
def test_huge_exponents_are_rejected_without_building_the_number(metric: Metric) -> None:
    """``1e100000`` is 16 characters; turning it into an int first costs 90 kB and 0.3 s
    (``1e999999`` 26 s), so the bound must be checked on the decimal."""
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as info:
            to_units(metric, "1e100000", "amounts.x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "amounts.x"
    assert peak < 16 * 1024


def test_credit_bound_is_63_bits_of_units() -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"credits": "9223372036.854775808"})
    assert info.value.field == "amounts.credits"
    with pytest.raises(ValidationError):
        Amounts.parse({"credits": 2**63})


# ---------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------

BAD_VALUES = [
    -1,
    -(2**63),
    "-1",
    Decimal("-0.000000001"),
    True,
    False,
    float("nan"),
    float("inf"),
    float("-inf"),
    "NaN",
    "sNaN",
    "nan",
    "inf",
    "-Infinity",
    Decimal("NaN"),
    Decimal("Infinity"),
    2**63,
    2**64,
    10**30,
    "9223372036854775808e9",
    "",
    "abc",
    "1,5",
    "0x10",
    [],
    [1],
    {},
    {"value": 1},
    b"1",
    object(),
    1 + 0j,
]


@pytest.mark.parametrize("metric", [*INTEGER_METRICS, Metric.CREDITS], ids=str)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_amounts_are_rejected_naming_the_field(metric: Metric, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({metric.value: value})
    assert info.value.field == f"amounts.{metric.value}"
    assert info.value.status == 422
    assert info.value.details["field"] == f"amounts.{metric.value}"
    with pytest.raises(ValidationError) as info:
        Amounts.parse({metric.value: value}, field="body.usage")
    assert info.value.field == f"body.usage.{metric.value}"


@pytest.mark.parametrize("metric", INTEGER_METRICS, ids=str)
@pytest.mark.parametrize("value", [1.5, "1.5", Decimal("0.1"), 1e-9, "1e-9"], ids=repr)
def test_integer_metrics_refuse_fractions(metric: Metric, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({metric.value: value})
    assert info.value.field == f"amounts.{metric.value}"


@pytest.mark.parametrize("metric", INTEGER_METRICS, ids=str)
@pytest.mark.parametrize(
    ("value", "units"),
    [
        (0, 0),
        (5, 5),
        (5.0, 5),
        ("5", 5),
        (Decimal("5"), 5),
        (Decimal("5.000"), 5),
        ("1e3", 1000),
        (MAX_UNITS, MAX_UNITS),
        (str(MAX_UNITS), MAX_UNITS),
    ],
    ids=repr,
)
def test_integer_metrics_accept_whole_numbers(metric: Metric, value: object, units: int) -> None:
    assert to_units(metric, value, "x") == units


def test_huge_integers_are_exact() -> None:
    # 2**63 - 1 is not representable as a float; it must not pass through one.
    assert Amounts.parse({"tokens": MAX_UNITS})[Metric.TOKENS] == MAX_UNITS
    assert to_units(Metric.TOKENS, "9223372036854775807", "x") == MAX_UNITS
    with pytest.raises(ValidationError):
        to_units(Metric.TOKENS, "9223372036854775808", "x")
    with pytest.raises(ValidationError):
        to_units(Metric.TOKENS, 9.3e18, "x")


def test_token_sum_over_63_bits_is_rejected_as_tokens() -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"input_tokens": MAX_UNITS, "output_tokens": 1})
    assert info.value.field == "amounts.tokens"
    sum_max = Amounts.parse({"input_tokens": MAX_UNITS - 1, "output_tokens": 1})
    assert sum_max[Metric.TOKENS] == MAX_UNITS


@pytest.mark.parametrize("name", ["concurrent_requests", "input_sequence_length"])
def test_windowless_metrics_are_not_consumed(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"tokens": 1, name: 1})
    assert info.value.field == f"amounts.{name}"
    with pytest.raises(ValidationError) as info:
        Amounts.parse({name: 0}, field="consume")
    assert info.value.field == f"consume.{name}"


@pytest.mark.parametrize("name", ["tokenz", "Tokens", "cost", "", "requests "])
def test_unknown_metric_is_rejected(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Amounts.parse({"tokens": 1, name: 1})
    assert info.value.field == f"amounts.{name}"


@pytest.mark.parametrize(
    ("units", "wire"),
    [
        (1, "0.000000001"),
        (1_000, "0.000001"),
        (1_500_000_000, "1.5"),
        (1_000_000_000, "1"),
        (100 * CREDIT_SCALE, "100"),
        (12_300 * CREDIT_SCALE, "12300"),
        (MAX_UNITS, "9223372036.854775807"),
    ],
)
def test_credits_travel_as_plain_decimal_strings(units: int, wire: str) -> None:
    """No exponent notation on the wire: ``100``, not ``1E+2``; ``0.000000001``, not ``1E-9``."""
    assert wire_number(from_units(Metric.CREDITS, units)) == wire
    assert encode_amounts(Amounts({Metric.CREDITS: units})) == {"credits": wire}


def test_wire_number() -> None:
    assert wire_number(None) is None
    assert wire_number(7) == 7
    assert wire_number(Decimal("2.5")) == "2.5"


# ---------------------------------------------------------------------------
# Units round trip
# ---------------------------------------------------------------------------


def test_from_units() -> None:
    assert from_units(Metric.TOKENS, 42) == 42
    assert isinstance(from_units(Metric.TOKENS, 42), int)
    assert from_units(Metric.CREDITS, 0) == Decimal(0)
    assert from_units(Metric.CREDITS, 1) == Decimal("0.000000001")
    assert from_units(Metric.CREDITS, 1_500_000_000) == Decimal("1.5")
    assert from_units(Metric.CREDITS, MAX_UNITS) == Decimal("9223372036.854775807")
    assert isinstance(from_units(Metric.CREDITS, 7), Decimal)


@settings(max_examples=200)
@given(st.sampled_from(INTEGER_METRICS), st.integers(0, MAX_UNITS))
def test_integer_units_round_trip(metric: Metric, units: int) -> None:
    assert to_units(metric, units, "x") == units
    assert from_units(metric, units) == units
    assert to_units(metric, str(units), "x") == units


@settings(max_examples=200)
@given(st.integers(0, MAX_UNITS))
def test_credit_units_round_trip(units: int) -> None:
    value = from_units(Metric.CREDITS, units)
    assert isinstance(value, Decimal)
    assert to_units(Metric.CREDITS, value, "x") == units
    assert to_units(Metric.CREDITS, str(value), "x") == units
    assert value == Decimal(units).scaleb(-CREDIT_PLACES)


@settings(max_examples=200)
@given(st.decimals(min_value=0, max_value=MAX_CREDITS, places=CREDIT_PLACES))
def test_credit_decimals_round_trip(value: Decimal) -> None:
    units = to_units(Metric.CREDITS, value, "x")
    assert 0 <= units <= MAX_UNITS
    assert from_units(Metric.CREDITS, units) == value


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from([m.value for m in CONSUMABLE]),
        st.integers(0, 2**32),  # 2**32 credits is still below 2**63 units
        max_size=len(CONSUMABLE),
    )
)
def test_amounts_units_json_round_trip(values: dict[str, int]) -> None:
    amounts = Amounts.parse(values)
    assert Amounts.from_units_json(amounts.to_units_json()) == amounts
    assert all(units > 0 for units in amounts.values())
    assert all(isinstance(units, int) for units in amounts.to_units_json().values())
    for name, units in values.items():
        metric = Metric(name)
        expected = units * CREDIT_SCALE if metric.is_decimal else units
        assert amounts[metric] == expected

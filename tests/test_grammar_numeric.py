"""Numeric bounds as patterns: what the grammar accepts is exactly the range.

The patterns are checked as regexes (the same tree renders as GBNF) against
arithmetic, over random bounds and random texts of the JSON forms a model
may write; the GBNF is checked to parse in llama.cpp.
"""

from __future__ import annotations

import re
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.engines.llamacpp.grammar_numeric import (
    OPEN,
    bounded,
    gbnf,
    integers,
    numbers,
    regex,
)

ints = st.integers(min_value=-5000, max_value=5000)
decimals = st.decimals(min_value=-300, max_value=300, places=3, allow_nan=False)


def text_of_int(value: int) -> str:
    return str(value)


@settings(max_examples=400, deadline=None)
@given(ints, ints, st.lists(ints, min_size=1, max_size=30))
def test_integer_ranges_accept_exactly_their_members(a: int, b: int, probes: list[int]) -> None:
    lo, hi = min(a, b), max(a, b)
    pattern = re.compile(regex(integers(lo, hi)))
    for value in [*probes, lo, hi, lo - 1, hi + 1, 0]:
        assert bool(pattern.fullmatch(str(value))) == (lo <= value <= hi), (lo, hi, value)
    # nothing but canonical decimal text: no leading zeros, no "-0", no "+"
    for text in ("007", "-0", "+1", "1.0", ""):
        if pattern.fullmatch(text):
            raise AssertionError((lo, hi, text))


def _texts(value: Decimal) -> list[str]:
    """Texts of ``value`` a model may write: plain, with trailing zeros, integer-only."""
    plain = format(value.normalize(), "f")
    out = [plain]
    if "." in plain:
        out.append(plain + "00")
    else:
        out += [plain + ".0", plain + ".000"]
    return out


@settings(max_examples=400, deadline=None)
@given(decimals, decimals, st.lists(decimals, min_size=1, max_size=20))
def test_number_ranges_accept_exactly_their_members(
    a: Decimal, b: Decimal, probes: list[Decimal]
) -> None:
    lo, hi = min(a, b), max(a, b)
    pattern = re.compile(regex(numbers(lo, hi)))
    step = Decimal("0.001")
    for value in [*probes, lo, hi, lo - step, hi + step, Decimal(0)]:
        for text in _texts(value):
            accepted = bool(pattern.fullmatch(text))
            assert accepted == (lo <= Decimal(text) <= hi), (lo, hi, text)
    for text in ("1e5", "01", ".5", "5.", "+1", "--1"):
        if pattern.fullmatch(text):
            raise AssertionError((lo, hi, text))


def test_schema_bounds_exclusive_and_open() -> None:
    def accepts(schema: dict[str, object], text: str) -> bool:
        node = bounded(schema)
        assert node is not None
        return bool(re.fullmatch(regex(node), text))

    passengers = {"type": "integer", "minimum": 1, "maximum": 9}
    assert [accepts(passengers, str(n)) for n in (0, 1, 9, 10)] == [False, True, True, False]
    strict = {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2.5}
    assert [accepts(strict, str(n)) for n in (0, 1, 2, 3)] == [False, True, True, False]
    above = {"type": "integer", "minimum": 18}
    assert accepts(above, "18") and accepts(above, "123456") and not accepts(above, "17")
    assert not accepts(above, str(OPEN + 1))  # open bounds end at 16 digits
    below = {"type": "integer", "maximum": -3}
    assert accepts(below, "-3") and accepts(below, "-40") and not accepts(below, "-2")
    rate = {"type": "number", "minimum": 0, "maximum": 1}
    assert accepts(rate, "0.25") and accepts(rate, "1.0") and not accepts(rate, "1.01")
    assert bounded({"type": "number", "exclusiveMinimum": 0}) is None  # left to the plain rule
    assert bounded({"type": "integer"}) is None


def test_the_gbnf_parses_in_llama_cpp() -> None:
    from llama_cpp import llama_grammar

    for node in (integers(-42, 1234), numbers(Decimal("-2.5"), Decimal("10.125"))):
        llama_grammar.LlamaGrammar.from_string(f"root ::= {gbnf(node)}", verbose=False)

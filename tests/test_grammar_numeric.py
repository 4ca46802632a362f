"""Numeric bounds as patterns: what the grammar accepts is exactly the range.

The patterns are checked as regexes (the same tree renders as GBNF) against
arithmetic, over random bounds and random texts of the JSON forms a model
may write, and against jsonschema's validators (both spellings of exclusive
bounds, ``multipleOf``); llama.cpp's own matcher accepts what the regex does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from decimal import Decimal

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.engines.llamacpp.grammar_numeric import (
    LISTED,
    OPEN,
    bounded,
    gbnf,
    integers,
    numbers,
    regex,
)
from parley.engines.llamacpp.vocab import LlamaVocab
from tests.grammar_acceptance import Acceptor, schema_grammar

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


def _inside(value: Decimal, lo: Decimal, hi: Decimal, low_strict: bool, high_strict: bool) -> bool:
    above = value > lo if low_strict else value >= lo
    below = value < hi if high_strict else value <= hi
    return above and below


@settings(max_examples=600, deadline=None)
@given(
    decimals, decimals, st.booleans(), st.booleans(), st.lists(decimals, min_size=1, max_size=20)
)
def test_number_ranges_accept_exactly_their_members(
    a: Decimal, b: Decimal, low_strict: bool, high_strict: bool, probes: list[Decimal]
) -> None:
    lo, hi = min(a, b), max(a, b)
    pattern = re.compile(regex(numbers(lo, hi, low_strict, high_strict)))
    step = Decimal("0.001")
    tiny = Decimal("0.000001")
    edges = [lo, hi, lo - step, hi + step, lo + tiny, hi - tiny, lo - tiny, hi + tiny]
    for value in [*probes, *edges, Decimal(0), -tiny, tiny]:
        for text in _texts(value):
            accepted = bool(pattern.fullmatch(text))
            assert accepted == _inside(Decimal(text), lo, hi, low_strict, high_strict), (
                lo,
                hi,
                low_strict,
                high_strict,
                text,
            )
    for text in ("-0", "-0.0"):  # zero with a sign is zero: never outside the range
        if pattern.fullmatch(text):
            assert _inside(Decimal(0), lo, hi, low_strict, high_strict), (lo, hi, text)
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
    positive = {"type": "number", "exclusiveMinimum": 0}
    assert accepts(positive, "0.001") and accepts(positive, "7")
    assert not any(accepts(positive, t) for t in ("0", "0.0", "-0", "-0.000", "-1"))
    draft4 = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}
    assert accepts(draft4, "1") and not accepts(draft4, "0.00")
    assert bounded({"type": "integer"}) is None


def test_the_gbnf_parses_in_llama_cpp() -> None:
    from llama_cpp import llama_grammar

    for node in (integers(-42, 1234), numbers(Decimal("-2.5"), Decimal("10.125"))):
        llama_grammar.LlamaGrammar.from_string(f"root ::= {gbnf(node)}", verbose=False)


def _schema_accepts(schema: dict[str, object], text: str) -> bool:
    node = bounded(schema)
    assert node is not None, schema
    return bool(re.fullmatch(regex(node), text))


bound = st.none() | st.integers(-300, 300) | decimals.map(float)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["integer", "number"]),
    st.sampled_from(["2020-12", "draft4"]),
    bound,
    bound,
    st.booleans(),
    st.booleans(),
    st.lists(decimals | ints, min_size=1, max_size=20),
)
def test_schema_bounds_accept_what_jsonschema_accepts(
    kind: str,
    draft: str,
    low: float | None,
    high: float | None,
    low_strict: bool,
    high_strict: bool,
    probes: list[Decimal | int],
) -> None:
    """Both spellings of an exclusive bound: 2020-12's number, draft 4's boolean."""
    schema: dict[str, object] = {"type": kind}
    for value, strict, inclusive, exclusive in (
        (low, low_strict, "minimum", "exclusiveMinimum"),
        (high, high_strict, "maximum", "exclusiveMaximum"),
    ):
        if value is None:
            continue
        if draft == "draft4":
            schema[inclusive] = value
            schema[exclusive] = strict
        else:
            schema[exclusive if strict else inclusive] = value
    if low is None and high is None:
        assert bounded(schema) is None
        return
    validator = (
        jsonschema.Draft4Validator if draft == "draft4" else jsonschema.Draft202012Validator
    )(schema)
    lo = Decimal(-OPEN) if low is None else Decimal(repr(low))
    hi = Decimal(OPEN) if high is None else Decimal(repr(high))
    low_strict, high_strict = low_strict and low is not None, high_strict and high is not None
    if kind == "integer":
        first = math.floor(lo) + 1 if low_strict else math.ceil(lo)
        last = math.ceil(hi) - 1 if high_strict else math.floor(hi)
        satisfiable = first <= last
    else:
        satisfiable = _inside((lo + hi) / 2, lo, hi, low_strict, high_strict)
    if not satisfiable:
        return  # the grammar writes the lowest bound (documented)
    values = [Decimal(p) for p in probes]
    for edge in (low, high):
        if edge is not None:
            e = Decimal(repr(edge))
            values += [e, e - 1, e + 1, e - Decimal("0.001"), e + Decimal("0.001")]
    for value in values:
        for text in _texts(value) if kind == "number" else [str(value)]:
            if kind == "integer" and "." in text:
                continue  # integer texts only: the grammar writes no fraction for an integer
            valid = validator.is_valid(json.loads(text))
            assert _schema_accepts(schema, text) == valid, (schema, text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 2, 3, 4, 5, 7, 8, 10, 12, 16, 25, 40, 50, 100, 125, 1000, 2.0, 10.0]),
    st.none() | ints,
    st.none() | ints,
    st.lists(st.integers(-20000, 20000), min_size=1, max_size=30),
)
def test_multiple_of_a_whole_number(
    step: float, low: int | None, high: int | None, probes: list[int]
) -> None:
    schema: dict[str, object] = {"type": "integer", "multipleOf": step}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    node = bounded(schema)
    lo = -OPEN if low is None else low
    hi = OPEN if high is None else high
    # a step of 2^i 5^j divides 10^k: the last k digits decide
    k = next((k for k in range(17) if 10**k % int(step) == 0), None)
    by_last_digits = k is not None and 10**k // int(step) <= LISTED  # endings listed
    enforced = by_last_digits or (hi - lo) // int(step) + 1 <= LISTED
    if node is None:  # neither bound nor an enforceable multiple: the plain rule
        assert low is None and high is None and not enforced
        return
    validator = jsonschema.Draft202012Validator(schema)
    pattern = re.compile(regex(node))
    satisfiable = any(validator.is_valid(v) for v in range(lo, min(hi, lo + 20000) + 1))
    for value in [*probes, lo, hi, lo - 1, hi + 1, 0, int(step), -int(step)]:
        accepted = bool(pattern.fullmatch(str(value)))
        if not satisfiable:
            continue
        # jsonschema divides by a float step in floating point: exact below 2^53 only
        valid = validator.is_valid(value) if abs(value) < 2**40 else value % int(step) == 0
        if enforced:  # (an open bound ends at 16 digits, as plain integers do)
            assert accepted == (valid and lo <= value <= hi), (schema, value)
        else:  # the bounds alone
            assert accepted == (lo <= value <= hi), (schema, value)


def test_multiples_written_as_integers() -> None:
    money = {"type": "number", "multipleOf": 100, "minimum": 0}
    assert _schema_accepts(money, "0") and _schema_accepts(money, "2500")
    assert not _schema_accepts(money, "250") and not _schema_accepts(money, "2500.0")
    assert not _schema_accepts(money, "-100") and not _schema_accepts(money, "000")
    whole = {"type": "number", "multipleOf": 1, "maximum": 2.5}
    assert _schema_accepts(whole, "2") and not _schema_accepts(whole, "1.5")
    # a step that is not a whole number is not enforced (bounds only)
    assert bounded({"type": "number", "multipleOf": 0.1}) is None
    assert bounded({"type": "integer", "multipleOf": 0.5}) is None  # every integer qualifies
    odd = {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 30}
    assert [n for n in range(0, 40) if _schema_accepts(odd, str(n))] == [14, 21, 28]
    # no multiple in range: the lowest bound, as with other unsatisfiable bounds
    assert _schema_accepts({"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9}, "1")


@pytest.fixture(scope="module")
def acceptor() -> Iterator[Acceptor]:
    from parley.engines.llamacpp import embedded_model_path

    vocab = LlamaVocab(embedded_model_path())
    yield Acceptor(vocab)
    vocab.close()


@pytest.mark.model
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(
        [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "number", "exclusiveMinimum": -1.5, "exclusiveMaximum": 2.25},
            {"type": "number", "minimum": 0.1, "exclusiveMinimum": True, "maximum": 0.3},
            {"type": "integer", "exclusiveMaximum": 10, "minimum": -3},
            {"type": "integer", "multipleOf": 100, "minimum": -1000},
            {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100},
            {"type": "number", "multipleOf": 1, "exclusiveMaximum": 5},
        ]
    ),
    st.lists(decimals | ints, min_size=1, max_size=10),
)
def test_the_gbnf_accepts_what_the_regex_does(
    acceptor: Acceptor, schema: dict[str, object], probes: list[Decimal | int]
) -> None:
    """llama.cpp's matcher on the converter's grammar, against the regex the
    arithmetic tests check (the two renderings of one tree)."""
    grammar, _ = schema_grammar(schema)
    node = bounded(schema)
    assert node is not None
    for probe in probes:
        for text in _texts(Decimal(probe)):
            assert acceptor.accepts(grammar, text) == bool(re.fullmatch(regex(node), text)), text

"""String formats as grammar: llama.cpp's matcher accepts a value exactly when
it is valid and in the documented form.

Every candidate (boundary values around each field: month 13, 30 February,
29 February of 1900 and 2000, hour 24, minute 60, an octet 256, ...) is
offered to the grammar the converter writes, through llama.cpp itself
(``tests.grammar_acceptance``), and compared with jsonschema's
``FormatChecker`` (2020-12's). jsonschema checks ``date-time`` and ``time`` only with the
optional ``rfc3339-validator`` package, so those are also compared with the
RFC 3339 grammar below; its ``email`` check is only "has an @", so email
candidates outside the documented form are listed as refused on purpose.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from parley.engines.llamacpp.vocab import LlamaVocab
from tests.grammar_acceptance import Acceptor, schema_grammar

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER

# RFC 3339 section 5.6, any letter case, leap second allowed (the RFC's own grammar).
_RFC3339_TIME = r"(\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-](\d\d):(\d\d))"
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt]" + _RFC3339_TIME)


def rfc3339(text: str) -> bool:
    match = _RFC3339.fullmatch(text)
    if not match:
        return False
    year, month, day, hour, minute, second, _, _, oh, om = match.groups()
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:
        return False
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        return False
    return oh is None or (int(oh) <= 23 and int(om) <= 59)


def valid(fmt: str, text: str) -> bool:
    if not CHECKER.conforms(text, fmt):
        return False
    if fmt == "date-time":
        return rfc3339(text)
    if fmt == "time":
        return rfc3339("1970-01-01T" + text)
    return True


def documented(fmt: str, text: str) -> bool:
    """The form the grammar writes (``grammar_format``'s docstring): upper-case
    ``T`` and ``Z``, no leap second, at most 9 fraction digits."""
    if fmt not in ("time", "date-time"):
        return True
    clock = text[11:] if fmt == "date-time" else text
    if fmt == "date-time" and text[10:11] != "T":
        return False
    fraction = re.match(r"\d\d:\d\d:\d\d(?:\.(\d+))?", clock)
    digits = fraction.group(1) if fraction else None
    return "z" not in clock and clock[6:8] != "60" and (digits is None or len(digits) <= 9)


@pytest.fixture(scope="module")
def acceptor() -> Iterator[Acceptor]:
    from parley.engines.llamacpp import embedded_model_path

    vocab = LlamaVocab(embedded_model_path())
    yield Acceptor(vocab)
    vocab.close()


def check(acceptor: Acceptor, schema: dict[str, Any], texts: list[str]) -> int:
    """accepted <=> valid (and in the documented form); the number accepted."""
    grammar, converter = schema_grammar(schema)
    assert not converter.unformatted, schema
    fmt = schema["format"]
    lo, hi = schema.get("minLength", 0), schema.get("maxLength", 10**9)
    accepted = 0
    for text in texts:
        expected = valid(fmt, text) and documented(fmt, text) and lo <= len(text) <= hi
        got = acceptor.accepts(grammar, json.dumps(text))
        assert got == expected, (schema, text)
        accepted += got
    return accepted


YEARS = ["0000", "0001", "0004", "0100", "0400", "1900", "1999", "2000", "2023", "2024", "2100"]
YEARS += ["2400", "9996", "9999"]
MONTHS = [f"{m:02}" for m in range(14)]
DAYS = ["00", "01", "09", "10", "19", "20", "28", "29", "30", "31", "32", "39"]
DATES = ["-".join(parts) for parts in itertools.product(YEARS, MONTHS, DAYS)]
MALFORMED_DATES = ["2024-1-01", "2024-01-1", "20240101", "2024/01/01", "224-01-01", "2024-01-01T"]
MALFORMED_DATES += [" 2024-01-01", "2024-01-01 ", "+2024-01-01", "12024-01-01", ""]


@pytest.mark.model
def test_date_admits_each_months_days_and_leap_days(acceptor: Acceptor) -> None:
    accepted = check(acceptor, {"type": "string", "format": "date"}, DATES + MALFORMED_DATES)
    assert accepted > 1000
    # 29 February across four centuries: Gregorian leap years only
    feb29 = [f"{year:04}-02-29" for year in [*range(1, 410), *range(400, 10000, 100)]]
    check(acceptor, {"type": "string", "format": "date"}, feb29)


SECONDS = [
    f"{h}:{m}:{s}"
    for h in ("00", "09", "19", "23", "24", "1")
    for m in ("00", "59", "60")
    for s in ("00", "59", "60", "5")
]
FRACTIONS = ["", ".", ".5", ".123", ".123456789", ".1234567890"]
OFFSETS = [
    "Z",
    "z",
    "+00:00",
    "-00:00",
    "+23:59",
    "-05:30",
    "+24:00",
    "+05:60",
    "",
    "+0500",
    "+5:00",
]
TIMES = [s + f + o for s in SECONDS for f in FRACTIONS for o in OFFSETS]


@pytest.mark.model
def test_time_is_rfc3339_full_time(acceptor: Acceptor) -> None:
    assert check(acceptor, {"type": "string", "format": "time"}, TIMES) > 100


@pytest.mark.model
def test_date_time_is_a_date_t_and_a_time(acceptor: Acceptor) -> None:
    dates = ["2024-02-29", "2023-02-29", "0000-01-01", "9999-12-31", "2024-13-01"]
    times = [
        "23:59:59Z",
        "00:00:00.5+05:30",
        "24:00:00Z",
        "12:00:00",
        "12:00:60Z",
        "12:00:00.1234567890Z",
    ]
    texts = [d + sep + t for d in dates for sep in ("T", "t", " ", "") for t in times]
    assert check(acceptor, {"type": "string", "format": "date-time"}, texts) == 4


@pytest.mark.model
@pytest.mark.parametrize(
    ("lo", "hi"), [(0, 9), (9, 9), (10, 10), (20, 20), (9, 14), (14, 16), (15, 20), (21, 100)]
)
def test_time_length_bounds_choose_the_fraction(acceptor: Acceptor, lo: int, hi: int) -> None:
    schema = {"type": "string", "format": "time", "minLength": lo, "maxLength": hi}
    _, converter = schema_grammar(schema)
    if converter.unformatted:  # no time has such a length: the bounds alone
        assert not any(valid("time", t) and lo <= len(t) <= hi for t in TIMES), (lo, hi)
        return
    check(acceptor, schema, TIMES)
    stamp = {**schema, "format": "date-time", "minLength": lo + 11, "maxLength": hi + 11}
    check(acceptor, stamp, ["2024-01-31T" + t for t in TIMES])


UUIDS = [
    "123e4567-e89b-12d3-a456-426614174000",
    "123E4567-E89B-12D3-A456-426614174000",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "123e4567e89b12d3a456426614174000",
    "123e4567-e89b-12d3-a456-42661417400",
    "123e4567-e89b-12d3-a456-4266141740000",
    "123e4567-e89b-12d3-a456_426614174000",
    "g23e4567-e89b-12d3-a456-426614174000",
    "{123e4567-e89b-12d3-a456-426614174000}",
    "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
]


@pytest.mark.model
def test_uuid_is_8_4_4_4_12_hex(acceptor: Acceptor) -> None:
    assert check(acceptor, {"type": "string", "format": "uuid"}, UUIDS) == 4


OCTETS = ["0", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300"]
OCTETS += ["00", "01", "010", "-1", ""]


@pytest.mark.model
def test_ipv4_is_four_octets_without_leading_zeros(acceptor: Acceptor) -> None:
    texts = [f"{a}.{b}.1.{c}" for a in OCTETS for b in ("0", "255", "256") for c in OCTETS]
    texts += ["1.2.3", "1.2.3.4.5", "1.2.3.4.", " 1.2.3.4"]
    assert check(acceptor, {"type": "string", "format": "ipv4"}, texts) > 100


EMAILS = [
    "a@b.cd",
    "first.last@example.com",
    "x+tag@mail.example.co.uk",
    "o'brien@ex-ample.org",
    "!#$%&'*+/=?^_`{|}~-@x9.io",
    "user@123.example.com",
    "x@xn--80ak6aa92e.com",
    "a" * 64 + "@" + "b" * 63 + ".cd",
    "a.b.c.d@e.f.g.h.ij",
]
NOT_EMAILS = ["", "@example.com", "user@", "userexample.com", "user@@example.com", "a b@c.de"]
# valid under RFC 5322 (and jsonschema's "@" check) but outside the documented form
OUTSIDE = [
    "user@localhost",
    "user@example.c",
    "user@example.123",
    "user@-example.com",
    "user@example-.com",
    "user@example..com",
    ".user@example.com",
    "user.@example.com",
    "us..er@example.com",
    '"quoted"@example.com',
    "user@[192.0.2.1]",
    "user@example.com.",
    # past the documented bounds of each part
    "a" * 65 + "@example.com",
    "a@" + "b" * 64 + ".cd",
    "a.b.c.d.e@example.com",
    "a@b.c.d.e.f.gh",
    "a@b." + "c" * 64,
]


@pytest.mark.model
def test_email_is_a_practical_subset(acceptor: Acceptor) -> None:
    grammar, _ = schema_grammar({"type": "string", "format": "email"})
    for text in EMAILS:
        assert acceptor.accepts(grammar, json.dumps(text)), text
        assert valid("email", text)
    for text in NOT_EMAILS + OUTSIDE:
        assert not acceptor.accepts(grammar, json.dumps(text)), text


@pytest.mark.model
def test_nullable_and_untyped_formats(acceptor: Acceptor) -> None:
    grammar, _ = schema_grammar({"type": ["string", "null"], "format": "date"})
    assert acceptor.accepts(grammar, "null") and acceptor.accepts(grammar, '"2024-02-29"')
    assert not acceptor.accepts(grammar, '"2023-02-29"')
    # a property whose rule takes the name of one of the format's own rules
    schema = {
        "type": "object",
        "properties": {"fmt-year": {"type": "string", "maxLength": 3}, "d": {"format": "date"}},
        "required": ["fmt-year", "d"],
    }
    grammar, _ = schema_grammar(schema)
    assert acceptor.accepts(grammar, '{"fmt-year": "abc", "d": "2000-02-29"}')
    assert not acceptor.accepts(grammar, '{"fmt-year": "abc", "d": "abcd"}')
    grammar, _ = schema_grammar({"format": "uuid"})  # no type: the format's string
    assert acceptor.accepts(grammar, json.dumps(UUIDS[0]))
    assert not acceptor.accepts(grammar, '"x"')


@pytest.mark.model
def test_formats_the_grammar_does_not_combine(acceptor: Acceptor) -> None:
    """Length bounds that cut into a fixed format, and a pattern beside a format:
    the bounds or the pattern hold, the format is recorded as left out."""
    grammar, converter = schema_grammar({"type": "string", "format": "date", "maxLength": 8})
    assert converter.unformatted
    assert acceptor.accepts(grammar, '"x"') and not acceptor.accepts(grammar, '"123456789"')
    schema = {"type": "string", "format": "email", "maxLength": 64}
    grammar, converter = schema_grammar(schema)
    assert converter.unformatted and acceptor.accepts(grammar, '"not an email"')
    schema = {"type": "string", "format": "date", "pattern": "^[0-9]{4}$"}
    grammar, converter = schema_grammar(schema)
    assert converter.unformatted and acceptor.accepts(grammar, '"2024"')
    # a pattern the converter leaves out: the format holds instead
    grammar, converter = schema_grammar({"type": "string", "format": "date", "pattern": "^(a)\\1$"})
    assert converter.relaxed and not converter.unformatted
    assert acceptor.accepts(grammar, '"2024-02-29"') and not acceptor.accepts(grammar, '"aa"')
    # unknown formats are plain strings (keeping their length bounds)
    grammar, converter = schema_grammar({"type": "string", "format": "hostname", "maxLength": 3})
    assert not converter.unformatted
    assert acceptor.accepts(grammar, '"abc"') and not acceptor.accepts(grammar, '"abcd"')

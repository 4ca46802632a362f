"""String ``format``s as grammar: ``date``, ``time``, ``date-time``, ``uuid``,
``email`` and ``ipv4``, each a rule that admits only valid values.

What each admits (a subset of the valid values where the standard allows
spellings a model has no need of; nothing invalid):

* ``date``: ``YYYY-MM-DD``, years 0001-9999, each month's own days, 29 February
  in leap years only (Gregorian: divisible by 4, centuries by 400);
* ``time``: RFC 3339 ``full-time``, ``hh:mm:ss``, hours 00-23, minutes and
  seconds 00-59 (no leap second), an optional fraction of 1-9 digits, then
  ``Z`` or ``+hh:mm``/``-hh:mm`` (offset hours 00-23); upper-case ``Z`` only;
* ``date-time``: ``date "T" time`` (upper-case ``T``);
* ``uuid``: 8-4-4-4-12 hexadecimal digits, either case;
* ``email``: ``local@domain``: the local part one to four dot-separated runs
  of 1-64 RFC 5322 ``atext`` characters (letters, digits,
  ``!#$%&'*+/=?^_`{|}~-``), the domain one to four labels (1-63 letters,
  digits and inner hyphens) each followed by a dot, then a top-level label of
  2-63 letters; no quoted local parts, no IP literals, and RFC 5321's totals
  (64 for the local part, 253 for the domain) are not counted;
* ``ipv4``: four decimal octets 0-255 without leading zeros.

Every character is ASCII and none needs escaping in a JSON string. Length
bounds are combined exactly where the format's length varies only by its
fraction and offset (``time``, ``date-time``) or not at all; otherwise a
format whose lengths the bounds cut into is not expressed here (None: the
caller keeps the string's length bounds).
"""

from __future__ import annotations

import re
from collections.abc import Callable

AddRule = Callable[[str, str], str]  # (name, body) -> the rule's name

FRACTION = 9  # at most this many digits of a second's fraction (nanoseconds)

_HOUR = '([01] [0-9] | "2" [0-3])'
_SIXTY = "[0-5] [0-9]"
_RULES = {
    "fmt-year": '"0" ("0" ("0" [1-9] | [1-9] [0-9]) | [1-9] [0-9] [0-9]) | [1-9] [0-9] [0-9] [0-9]',
    "fmt-leap-year": '[0-9] [0-9] fmt-by-four | fmt-by-four "00"',
    "fmt-by-four": '"0" [48] | [2468] [048] | [13579] [26]',  # 04..96, never 00
    "fmt-date": (
        'fmt-year "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
        ' | ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
        ' | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))'
        ' | fmt-leap-year "-02-29"'
    ),
    "fmt-hms": f'{_HOUR} ":" {_SIXTY} ":" {_SIXTY}',
    "fmt-offset": f'[+-] {_HOUR} ":" {_SIXTY}',
    "fmt-hex": "[0-9a-fA-F]",
    "fmt-uuid": ' "-" '.join(f"fmt-hex{{{n}}}" for n in (8, 4, 4, 4, 12)),
    "fmt-atext": "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]",
    # RFC 1035 labels: 1-63 letters, digits and inner hyphens
    "fmt-label": "[A-Za-z0-9] ([A-Za-z0-9-]{0,61} [A-Za-z0-9])?",
    # Every part bounded, so a model repeating itself reaches the next part.
    "fmt-email": (
        'fmt-atext{1,64} ("." fmt-atext{1,64}){0,3} "@" (fmt-label "."){1,4} [A-Za-z]{2,63}'
    ),
    "fmt-octet": '"25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9] [0-9] | [0-9]',
    "fmt-ipv4": 'fmt-octet "." fmt-octet "." fmt-octet "." fmt-octet',
}
# Formats of fixed rule and lengths (shortest, longest; None: no longest).
_FIXED = {
    "date": ("fmt-date", 10, 10),
    "uuid": ("fmt-uuid", 36, 36),
    "email": ("fmt-email", 6, None),
    "ipv4": ("fmt-ipv4", 7, 15),
}
FORMATS = frozenset({*_FIXED, "time", "date-time"})  # the formats written here
_HMS = 8  # len("hh:mm:ss")
_DATE_T = 11  # len("YYYY-MM-DDT")


def format_rule(name: object, lo: int, hi: int | None, add: AddRule) -> str | None:
    """The body (quotes included) of a string of format ``name`` and ``lo..hi``
    characters; None for a format not written here or bounds it cannot meet."""
    if name in ("time", "date-time"):
        prefix = 0 if name == "time" else _DATE_T
        times = _times(lo - prefix, None if hi is None else hi - prefix, add)
        if times is None:
            return None
        if prefix:
            times = f'{_rule("fmt-date", add)} "T" {times}'
        return f'"\\"" {times} "\\""'
    if not isinstance(name, str) or name not in _FIXED:
        return None
    rule, shortest, longest = _FIXED[name]
    if lo > shortest or (hi is not None and (longest is None or hi < longest)):
        return None  # the bounds cut into the format's lengths
    return f'"\\"" {_rule(rule, add)} "\\""'


def _rule(name: str, add: AddRule) -> str:
    """Add rule ``name`` and the rules it uses, under the names ``add`` gives
    them (a schema's own rule of the same name moves ours, not the reverse)."""

    def used(match: re.Match[str]) -> str:
        return _rule(match.group(0), add) if match.group(0) in _RULES else match.group(0)

    return add(name, re.sub(r"\bfmt-[a-z-]+", used, _RULES[name]))


def _times(lo: int, hi: int | None, add: AddRule) -> str | None:
    """``hms fraction? offset`` of ``lo..hi`` characters: the fraction's digit
    count is what the bounds choose, for each kind of offset."""
    offsets: dict[str, list[str]] = {}  # fraction -> the offsets it goes with
    for offset, width in (('"Z"', 1), (_rule("fmt-offset", add), 6)):
        low = lo - _HMS - width
        high = FRACTION + 1 if hi is None else hi - _HMS - width
        # the fraction takes 0 characters, or 1 + k for k in 1..FRACTION digits
        digits = (max(1, low - 1), min(FRACTION, high - 1))
        some = f'"." [0-9]{{{digits[0]},{digits[1]}}}' if digits[0] <= digits[1] else None
        none = low <= 0 <= high
        if some or none:
            fraction = f"({some})? " if some and none else f"{some} " if some else ""
            offsets.setdefault(fraction, []).append(offset)
    if not offsets:
        return None
    hms = _rule("fmt-hms", add)
    options = [f"{hms} {fraction}({' | '.join(ends)})" for fraction, ends in offsets.items()]
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"

"""Bounded integers and numbers as grammar: JSON Schema's ``minimum``,
``maximum``, ``exclusiveMinimum`` and ``exclusiveMaximum`` (2020-12's numbers
and draft 4's booleans), enforced exactly, and ``multipleOf`` where a grammar
can say it exactly.

A bound becomes an alternation of digit patterns over the decimal text of
the value (the classic range-to-pattern decomposition: ``[17, 342]`` is
``1[7-9] | [2-9][0-9] | [1-2][0-9][0-9] | 3[0-3][0-9] | 34[0-2]``). Numbers
are written without an exponent (``-``? integer part, then an optional
fraction), and the fraction of an edge's integer part is compared digit by
digit with the bound's own (``>= 0.25`` after ``0.``: ``[3-9]… | 2[5-9]… |
25…``; a strict bound differs only once the bound's digits run out: ``> 0.25``
needs a non-zero digit after ``0.25``). A bound left open is closed at 16
digits, as the converter's plain integers are, and free fraction digits run
to at most 16.

``multipleOf`` a whole number ``m``, exact with any bounds when ``m`` divides
a power of ten ``10^k`` at most ``LISTED`` times (1, 2, 4, 5, 8, 10, 20, 25,
40, 50, 100, 125, ...; not 16, which needs 625 endings of 4 digits): the last
``k`` digits decide, so a quotient, then one of the endings; and otherwise when at most ``LISTED``
multiples are in range (they are listed); other cases (a multiple of 7 with
no bounds) are left out, the bounds alone holding. A multiple is written as
an integer, also for a ``number``. A fractional ``m`` (``0.01``) is left out:
validators test it in floating point, where 0.07 is not a multiple of 0.01.

Patterns are built as a small tree (``Seq`` of ``Lit``/``Cls``/``Star``,
``Alt``) and rendered both as GBNF and as a Python regex; the regex is what
the tests check against arithmetic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

OPEN = 10**16 - 1  # an open bound: as many digits as a plain integer may have
# Free fraction digits are bounded too (the plain rule's 16), or a model may
# write "5000.000..." until its budget ends.
FRACTION = 16


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Cls:
    lo: str
    hi: str


@dataclass(frozen=True)
class Star:  # up to FRACTION digits, possibly none
    pass


@dataclass(frozen=True)
class Zeros:  # up to FRACTION "0"s, possibly none
    pass


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Seq:
    parts: tuple[Node, ...]


Node = Lit | Cls | Star | Zeros | Alt | Seq
EMPTY = Seq(())
NOTHING = Alt(())  # matches nothing


def seq(*parts: Node) -> Node:
    flat: list[Node] = []
    for part in parts:
        if part == NOTHING:
            return NOTHING
        flat.extend(part.parts if isinstance(part, Seq) else (part,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*options: Node) -> Node:
    kept: list[Node] = []
    for option in options:
        for o in option.options if isinstance(option, Alt) else (option,):
            if o not in kept:
                kept.append(o)
    return kept[0] if len(kept) == 1 else Alt(tuple(kept))


def digit(lo: int, hi: int) -> Node:
    if lo > hi:
        return NOTHING
    return Lit(str(lo)) if lo == hi else Cls(str(lo), str(hi))


# --- integers -------------------------------------------------------------------


def naturals(a: int, b: int) -> Node:
    """Decimal texts (no leading zeros) of the integers in ``[a, b]``, ``0 <= a``."""
    if a > b:
        return NOTHING
    parts = []
    while a <= b:
        top = min(b, 10 ** len(str(a)) - 1)  # same number of digits as a
        parts.append(_same_length(str(a), str(top)))
        a = top + 1
    return alt(*parts)


def _same_length(a: str, b: str) -> Node:
    if len(a) == 1:
        return digit(int(a), int(b))
    if a[0] == b[0]:
        return seq(Lit(a[0]), _same_length(a[1:], b[1:]))
    rest = len(a) - 1
    low, high = int(a[0]), int(b[0])
    options: list[Node] = []
    if a[1:] != "0" * rest:
        options.append(seq(Lit(a[0]), _same_length(a[1:], "9" * rest)))
        low += 1
    tail_high = b[1:] == "9" * rest
    if not tail_high:
        high -= 1
    if low <= high:
        options.append(seq(digit(low, high), *[Cls("0", "9")] * rest))
    if not tail_high:
        options.append(seq(Lit(b[0]), _same_length("0" * rest, b[1:])))
    return alt(*options)


def integers(lo: int, hi: int) -> Node:
    """Decimal texts of the integers in ``[lo, hi]`` (``-0`` not among them)."""
    options = []
    if lo < 0:
        options.append(seq(Lit("-"), naturals(max(1, -hi), -lo)))
    if hi >= 0:
        options.append(naturals(max(0, lo), hi))
    return alt(*options)


# --- numbers ----------------------------------------------------------------------


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    whole = int(value)
    text = format(value - whole, "f")
    digits = text.partition(".")[2].rstrip("0")
    return whole, digits


def _above(d: str, strict: bool) -> Node:
    """Digits (maybe none) F with 0.F >= 0.d (> when ``strict``), after an equal prefix."""
    if not d:
        return seq(Zeros(), Cls("1", "9"), Star()) if strict else Star()
    first = int(d[0])
    return alt(seq(digit(first + 1, 9), Star()), seq(Lit(d[0]), _above(d[1:], strict)))


def _below(d: str, strict: bool) -> Node:
    """Digits (maybe none) F with 0.F <= 0.d (< when ``strict``), after an equal prefix.

    ``d`` has no trailing zeros, so a non-empty ``d`` is above the empty F."""
    if not d:
        return NOTHING if strict else Zeros()
    first = int(d[0])
    return alt(EMPTY, seq(digit(0, first - 1), Star()), seq(Lit(d[0]), _below(d[1:], strict)))


def _between(p: str, q: str, low_strict: bool, high_strict: bool) -> Node:
    """Digits (maybe none) F with 0.p <= 0.F <= 0.q (p <= q as fractions; either
    side strict)."""
    if not p and not low_strict:
        return _below(q, high_strict)  # every F is >= 0
    if not q:  # 0.p (<) 0.F (<)= 0: nothing, p being above zero or the bound strict
        return NOTHING
    first = p[0] if p else "0"  # a strict empty p is 0.000...: compare it digit by digit
    if first == q[0]:
        return seq(Lit(first), _between(p[1:], q[1:], low_strict, high_strict))
    low, high = int(first), int(q[0])
    return alt(
        seq(Lit(first), _above(p[1:], low_strict)),
        seq(digit(low + 1, high - 1), Star()),
        seq(Lit(q[0]), _below(q[1:], high_strict)),
    )


def _fraction(tail: Node) -> Node:
    """An optional ``.digits`` whose digits follow ``tail`` (at least one digit);
    no fraction at all when the empty F is in range (``5`` is ``5.0``)."""
    with_point = seq(Lit("."), _without_empty(tail))
    return alt(EMPTY, with_point) if _may_be_empty(tail) else with_point


def _without_empty(node: Node) -> Node:
    """``node`` less the empty string (fraction digits: at least one)."""
    match node:
        case Star():
            return seq(Cls("0", "9"), Star())
        case Zeros():
            return seq(Lit("0"), Zeros())
        case Alt(options=options):
            return alt(*(_without_empty(o) for o in options if o != EMPTY))
        case Seq(parts=()):
            return NOTHING
        case Seq(parts=(first, *rest)):
            if _may_be_empty(first):
                return alt(seq(_without_empty(first), *rest), _without_empty(seq(*rest)))
            return node
    return node


def _may_be_empty(node: Node) -> bool:
    match node:
        case Star() | Zeros():
            return True
        case Alt(options=options):
            return any(_may_be_empty(o) for o in options)
        case Seq(parts=parts):
            return all(_may_be_empty(p) for p in parts)
    return False


def nonnegative(
    p: Decimal, q: Decimal, low_strict: bool = False, high_strict: bool = False
) -> Node:
    """Texts ``I(.F)?`` of the decimals in ``[p, q]``, ``0 <= p <= q`` (either side strict)."""
    if p > q or (p == q and (low_strict or high_strict)):
        return NOTHING
    (pi, pf), (qi, qf) = _split(p), _split(q)
    if pi == qi:
        return seq(Lit(str(pi)), _fraction(_between(pf, qf, low_strict, high_strict)))
    options = [seq(Lit(str(pi)), _fraction(_above(pf, low_strict)))]
    if pi + 1 <= qi - 1:
        options.append(seq(naturals(pi + 1, qi - 1), _fraction(Star())))
    options.append(seq(Lit(str(qi)), _fraction(_below(qf, high_strict))))
    return alt(*options)


def numbers(lo: Decimal, hi: Decimal, low_strict: bool = False, high_strict: bool = False) -> Node:
    """Texts of the decimals in ``[lo, hi]`` (either side strict), without an exponent."""
    options = []
    if lo < 0:  # "-" and the magnitude: bounds swap sides; "-0" is 0
        if hi < 0:
            options.append(seq(Lit("-"), nonnegative(-hi, -lo, high_strict, low_strict)))
        else:
            options.append(
                seq(Lit("-"), nonnegative(Decimal(0), -lo, hi == 0 and high_strict, low_strict))
            )
    if hi >= 0:
        options.append(nonnegative(max(Decimal(0), lo), hi, lo >= 0 and low_strict, high_strict))
    return alt(*options)


# --- from a schema ------------------------------------------------------------------


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


Bound = tuple[Decimal, bool]  # a value and whether it is strict


def _limit(
    schema: dict[str, Any], inclusive: str, exclusive: str, pick: Callable[[list[Decimal]], Decimal]
) -> Bound | None:
    """The tightest of ``inclusive`` and ``exclusive`` (2020-12: a number;
    draft 4: ``true`` makes ``inclusive`` strict); ties go to the strict one."""
    bounds: list[Bound] = []
    if (value := _number(schema.get(inclusive))) is not None:
        bounds.append((value, schema.get(exclusive) is True))
    if (value := _number(schema.get(exclusive))) is not None:
        bounds.append((value, True))
    if not bounds:
        return None
    tightest = pick([v for v, _ in bounds])
    return tightest, any(strict for v, strict in bounds if v == tightest)


def _multiple(schema: dict[str, Any]) -> int | None:
    """``multipleOf`` when it is a whole number (the case a grammar can
    enforce; a fraction such as 0.1 is checked in floating point by validators,
    so whether 0.3 is a multiple depends on the validator)."""
    value = _number(schema.get("multipleOf"))
    if value is None or value < 1 or value != value.to_integral_value():
        return None
    return int(value)


def exact(schema: dict[str, Any]) -> bool:
    """Whether ``bounded`` enforces every numeric keyword of ``schema`` (a
    ``multipleOf`` it cannot write is left to the plain rule's bounds)."""
    if "multipleOf" not in schema:
        return True
    step = _multiple(schema)
    if step is None:
        return False
    low = _limit(schema, "minimum", "exclusiveMinimum", max)
    high = _limit(schema, "maximum", "exclusiveMaximum", min)
    lo = -OPEN if low is None else math.floor(low[0]) + 1 if low[1] else math.ceil(low[0])
    hi = OPEN if high is None else math.ceil(high[0]) - 1 if high[1] else math.floor(high[0])
    return multiples(max(lo, -OPEN), min(hi, OPEN), step) is not None


def bounded(schema: dict[str, Any]) -> Node | None:
    """The pattern of a bounded ``integer`` or ``number`` schema (bounds and, for
    whole numbers, ``multipleOf``); None when nothing here applies (the plain
    converter's rule then does)."""
    kind = schema.get("type")
    if kind not in ("integer", "number"):
        return None
    low = _limit(schema, "minimum", "exclusiveMinimum", max)
    high = _limit(schema, "maximum", "exclusiveMaximum", min)
    lo, hi = -OPEN, OPEN  # the whole numbers in range
    if low is not None:
        lo = max(lo, math.floor(low[0]) + 1 if low[1] else math.ceil(low[0]))
    if high is not None:
        hi = min(hi, math.ceil(high[0]) - 1 if high[1] else math.floor(high[0]))
    step = _multiple(schema)
    if step is not None and (node := multiples(lo, hi, step)) is not None:
        # a whole multiple is written as an integer (also for a number: 20, not 20.0)
        return node if node != NOTHING else integers(lo, lo)  # unsatisfiable: the lowest
    if low is None and high is None:
        return None
    if kind == "integer":
        return integers(lo, max(lo, hi))  # unsatisfiable as written: the smallest asked for
    dlo, low_strict = low or (Decimal(-OPEN), False)
    dhi, high_strict = high or (Decimal(OPEN), False)
    node = numbers(dlo, dhi, low_strict, high_strict)
    return node if node != NOTHING else numbers(dlo, dlo)  # unsatisfiable: the lower bound


# --- multiples ------------------------------------------------------------------------

LISTED = 256  # at most this many multiples in range are written out one by one


def multiples(lo: int, hi: int, step: int) -> Node | None:
    """Texts of the multiples of ``step`` in ``[lo, hi]`` (NOTHING when there are
    none); None when they are too many to list and no last digits decide them."""
    first, last = -(-lo // step), hi // step  # the quotients in range
    if first > last:
        return NOTHING
    if step == 1:
        return integers(lo, hi)  # (a number that is a multiple of 1 is an integer)
    options: list[Node] = []
    if lo < 0 and (negative := _magnitudes(max(1, -hi), -lo, step)) is not None:
        options.append(seq(Lit("-"), negative))
    if hi >= 0 and (positive := _magnitudes(max(0, lo), hi, step)) is not None:
        options.append(positive)
    if len(options) == (lo < 0) + (hi >= 0):
        return alt(*options)
    if last - first + 1 > LISTED:
        return None
    return alt(*(Lit(str(q * step)) for q in range(first, last + 1)))


def _magnitudes(a: int, b: int, step: int) -> Node | None:
    """Multiples of ``step`` in ``[a, b]`` (``0 <= a``) by their last ``k`` digits,
    when ``step`` divides ``10^k`` (``2^i 5^j``: 2, 4, 5, 8, 20, 25, 50, 10^k, ...)
    and at most ``LISTED`` endings qualify: ``q`` then one of the endings."""
    digits = next((k for k in range(1, 17) if 10**k % step == 0), None)
    if digits is None or 10**digits // step > LISTED:
        return None
    base = 10**digits
    endings = range(0, base, step)
    if a > b:
        return NOTHING

    def ending(q: int) -> Node:  # the endings of the multiples in [a, b] above q * base
        kept = [r for r in endings if a <= q * base + r <= b]
        if q == 0:  # below base: the ending is the whole number, without padding
            return alt(*(Lit(str(r)) for r in kept))
        return seq(Lit(str(q)), alt(*(Lit(f"{r:0{digits}}") for r in kept)))

    low, high = a // base, b // base  # the edge quotients, maybe partly in range
    if low == high:
        return ending(low)
    options = [ending(low)]
    if low + 1 <= high - 1:
        every = alt(*(Lit(f"{r:0{digits}}") for r in endings))
        options.append(seq(naturals(low + 1, high - 1), every))
    options.append(ending(high))
    return alt(*options)


# --- rendering ------------------------------------------------------------------------


def gbnf(node: Node) -> str:
    match node:
        case Lit(text=text):
            return '"' + text + '"'
        case Cls(lo=lo, hi=hi):
            return f"[{lo}-{hi}]"
        case Star():
            return f"[0-9]{{0,{FRACTION}}}"
        case Zeros():
            return f'"0"{{0,{FRACTION}}}'
        case Alt(options=options):
            assert options, "an empty range is never written"
            return "(" + " | ".join(gbnf(o) for o in options) + ")"
        case Seq(parts=parts):
            return " ".join(gbnf(p) for p in parts) if parts else '""'
    raise AssertionError(node)


def regex(node: Node) -> str:
    match node:
        case Lit(text=text):
            return re.escape(text)
        case Cls(lo=lo, hi=hi):
            return f"[{lo}-{hi}]"
        case Star():
            return f"[0-9]{{0,{FRACTION}}}"
        case Zeros():
            return f"0{{0,{FRACTION}}}"
        case Alt(options=options):
            return "(?:" + "|".join(regex(o) for o in options) + ")" if options else "(?!)"
        case Seq(parts=parts):
            return "".join(regex(p) for p in parts)
    raise AssertionError(node)

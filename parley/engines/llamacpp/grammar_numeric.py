"""Bounded integers and numbers as grammar: JSON Schema's ``minimum``,
``maximum``, ``exclusiveMinimum`` and ``exclusiveMaximum``, enforced exactly.

A bound becomes an alternation of digit patterns over the decimal text of
the value (the classic range-to-pattern decomposition: ``[17, 342]`` is
``1[7-9] | [2-9][0-9] | [1-2][0-9][0-9] | 3[0-3][0-9] | 34[0-2]``). Numbers
are written without an exponent (``-``? integer part, then an optional
fraction), and the fraction of an edge's integer part is compared digit by
digit with the bound's own (``>= 0.25`` after ``0.``: ``[3-9]… | 2[5-9]… |
25…``). A bound left open is closed at 16 digits, as the converter's plain
integers are, and free fraction digits run to at most 16.

Patterns are built as a small tree (``Seq`` of ``Lit``/``Cls``/``Star``,
``Alt``) and rendered both as GBNF and as a Python regex; the regex is what
the tests check against arithmetic.
"""

from __future__ import annotations

import math
import re
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


def _ge_tail(d: str) -> Node:
    """Digits (maybe none) F with 0.F >= 0.d, after an equal prefix."""
    if not d:
        return Star()
    first = int(d[0])
    return alt(seq(digit(first + 1, 9), Star()), seq(Lit(d[0]), _ge_tail(d[1:])))


def _le_tail(d: str) -> Node:
    """Digits (maybe none) F with 0.F <= 0.d, after an equal prefix."""
    if not d:
        return Zeros()
    first = int(d[0])
    return alt(EMPTY, seq(digit(0, first - 1), Star()), seq(Lit(d[0]), _le_tail(d[1:])))


def _between_tail(p: str, q: str) -> Node:
    """Digits (maybe none) F with 0.p <= 0.F <= 0.q (p <= q as fractions)."""
    if not p:
        return _le_tail(q)
    if not q:  # 0.p <= 0.F <= 0: only when p is all zeros, which it is not
        return NOTHING
    if p[0] == q[0]:
        return seq(Lit(p[0]), _between_tail(p[1:], q[1:]))
    low, high = int(p[0]), int(q[0])
    return alt(
        seq(Lit(p[0]), _ge_tail(p[1:])),
        seq(digit(low + 1, high - 1), Star()),
        seq(Lit(q[0]), _le_tail(q[1:])),
    )


def _fraction(tail: Node, bare: bool) -> Node:
    """An optional ``.digits`` whose digits follow ``tail`` (at least one digit);
    ``bare``: the integer part alone is in range too."""
    nonempty = _without_empty(tail)
    with_point = seq(Lit("."), nonempty)
    return alt(EMPTY, with_point) if bare else with_point


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


def nonnegative(p: Decimal, q: Decimal) -> Node:
    """Texts ``I(.F)?`` of the decimals in ``[p, q]``, ``0 <= p <= q``."""
    if p > q:
        return NOTHING
    (pi, pf), (qi, qf) = _split(p), _split(q)
    if pi == qi:
        return seq(Lit(str(pi)), _fraction(_between_tail(pf, qf), bare=not pf))
    options = [seq(Lit(str(pi)), _fraction(_ge_tail(pf), bare=not pf))]
    if pi + 1 <= qi - 1:
        options.append(seq(naturals(pi + 1, qi - 1), _fraction(Star(), bare=True)))
    options.append(seq(Lit(str(qi)), _fraction(_le_tail(qf), bare=True)))
    return alt(*options)


def numbers(lo: Decimal, hi: Decimal) -> Node:
    """Texts of the decimals in ``[lo, hi]``, without an exponent."""
    options = []
    if lo < 0:
        options.append(seq(Lit("-"), nonnegative(max(Decimal(0), -hi), -lo)))
    if hi >= 0:
        options.append(nonnegative(max(Decimal(0), lo), hi))
    return alt(*options)


# --- from a schema ------------------------------------------------------------------


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def bounded(schema: dict[str, Any]) -> Node | None:
    """The pattern of a bounded ``integer`` or ``number`` schema; None when it
    has no usable bound (the plain converter's rule then applies)."""
    kind = schema.get("type")
    low = [(_number(schema.get("minimum")), False), (_number(schema.get("exclusiveMinimum")), True)]
    high = [
        (_number(schema.get("maximum")), False),
        (_number(schema.get("exclusiveMaximum")), True),
    ]
    if all(v is None for v, _ in low + high):
        return None
    if kind == "integer":
        lo, hi = -OPEN, OPEN
        for v, strict in low:
            if v is not None:
                lo = max(lo, math.floor(v) + 1 if strict else math.ceil(v))
        for v, strict in high:
            if v is not None:
                hi = min(hi, math.ceil(v) - 1 if strict else math.floor(v))
        return integers(lo, max(lo, hi))  # unsatisfiable as written: the smallest asked for
    if kind == "number":
        if any(strict and v is not None for v, strict in low + high):
            return None  # exclusive bounds on decimals: not expressed (left to the plain rule)
        dlo = max((v for v, _ in low if v is not None), default=Decimal(-OPEN))
        dhi = min((v for v, _ in high if v is not None), default=Decimal(OPEN))
        return numbers(dlo, max(dlo, dhi))
    return None


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

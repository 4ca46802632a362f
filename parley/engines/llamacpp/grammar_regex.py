"""JSON-Schema ``pattern`` to GBNF, for the patterns a grammar can follow cheaply.

llama.cpp follows a grammar by keeping every parse stack still alive and, to
mask the vocabulary, walks each candidate token's characters through each
stack without merging the paths it branches into. A pattern that keeps many
parses alive at once (``([a-z]?){100}``: after each letter any of the hundred
copies may be the one that took it) makes that walk exponential in the
token's length, and one decoding step can take minutes.

So a pattern is turned into a grammar only when a simulation of its automaton
(counted repeats unrolled up to ``_UNROLL``) never has more than
``MAX_ACTIVE`` character positions alive after any input, and no repeated
group can match the empty string (``(a?)*``: llama.cpp also sees left
recursion there). Anything else, and what a grammar cannot express
(look-around, back-references, inline flags, anchors inside the pattern),
gives ``None``: the string is then constrained
by its length bounds only, and the caller says so. Counted repeats of any
size are written with ``repeat`` (``grammar_repeat.py``), so ``{0,100000}``
neither explodes nor trips llama.cpp's repetition limit.

The pattern is matched against the decoded string; the grammar writes its
JSON text, so ``"`` and ``\\`` appear escaped and control characters are not
offered.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley.engines.llamacpp.grammar_repeat import repeat

MAX_ACTIVE = 6  # positions alive at once; beyond it a step's cost grows too fast
_UNROLL = 24  # counted repeats are unrolled this far for the check
_MAX_STATES = 20_000  # automaton size checked at most
_MAX_SUBSETS = 3_000  # position sets explored at most
_MAX_UNICODE = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]

# What may stand unescaped inside a JSON string (DEL and surrogates left out too).
_SAFE: Ranges = ((0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, _MAX_UNICODE))
_QUOTE, _BACKSLASH = 0x22, 0x5C

_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x2028, 0x2029), (0xFEFF, 0xFEFF))


class Unsupported(Exception):
    """The pattern uses something this converter does not express."""


@dataclass(frozen=True)
class CharSet:
    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    item: Node
    lo: int
    hi: int | None  # None: unbounded


Node = CharSet | Seq | Alt | Rep


def pattern_rule(pattern: str, add_rule: Callable[[str], str]) -> str | None:
    """GBNF for the JSON text of a string matching ``pattern`` (quotes included),
    or None when the pattern is unsupported or too ambiguous to follow cheaply.
    ``add_rule`` names a rule body and returns the name (same body, same name)."""
    try:
        node = parse(pattern)
    except (Unsupported, re.error, RecursionError, OverflowError):
        return None
    if max_active(node) > MAX_ACTIVE:
        return None
    return '"\\"" ' + _emit(node, add_rule) + ' "\\""'


# --- parsing (Python's own regex parser, then a small tree) --------------------


def parse(pattern: str) -> Node:
    """The pattern as a tree; JSON Schema patterns are unanchored unless they say
    ``^`` / ``$``, so a missing anchor becomes "any characters" on that side."""
    c: Any = importlib.import_module("re._constants")  # Python's own regex parser (no stubs)
    p: Any = importlib.import_module("re._parser")
    tree: Any = p.parse(pattern)
    if tree.state.flags & ~(c.SRE_FLAG_UNICODE | c.SRE_FLAG_VERBOSE):
        raise Unsupported("inline flags")
    items = list(tree)
    anchored_start = bool(items) and items[0] == (c.AT, c.AT_BEGINNING)
    anchored_end = bool(items) and items[-1] in ((c.AT, c.AT_END), (c.AT, c.AT_END_STRING))
    items = items[1 if anchored_start else 0 : len(items) - 1 if anchored_end else len(items)]
    body = _convert(items, c)
    anything = Rep(CharSet((*_SAFE, (_QUOTE, _QUOTE), (_BACKSLASH, _BACKSLASH))), 0, None)
    parts = ([] if anchored_start else [anything]) + [body] + ([] if anchored_end else [anything])
    return parts[0] if len(parts) == 1 else Seq(tuple(parts))


def _convert(items: list[Any], c: Any) -> Node:
    out: list[Node] = []
    for op, av in items:
        if op is c.LITERAL:
            out.append(CharSet(((av, av),)))
        elif op is c.NOT_LITERAL:
            out.append(CharSet(_complement(((av, av),))))
        elif op is c.ANY:
            out.append(CharSet(_complement(((0x0A, 0x0A), (0x0D, 0x0D)))))
        elif op is c.IN:
            out.append(CharSet(_charset(av, c)))
        elif op is c.BRANCH:
            out.append(Alt(tuple(_convert(list(branch), c) for branch in av[1])))
        elif op is c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise Unsupported("inline flags")
            out.append(_convert(list(sub), c))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            item = _convert(list(sub), c)
            bound = None if hi is c.MAXREPEAT else hi
            if (bound is None or bound > 1) and _nullable(item):
                # ``(a?)*``, ``([a-z]?){100}``: as many parses as ways to place the
                # empty matches, and llama.cpp sees left recursion in it.
                raise Unsupported("a repeated group that can match the empty string")
            out.append(Rep(item, lo, bound))
        elif op is c.ATOMIC_GROUP:
            out.append(_convert(list(av), c))
        else:  # anchors inside, look-around, back-references, conditionals
            raise Unsupported(str(op))
    return out[0] if len(out) == 1 else Seq(tuple(out))


def _nullable(node: Node) -> bool:
    if isinstance(node, CharSet):
        return False
    if isinstance(node, Seq):
        return all(_nullable(item) for item in node.items)
    if isinstance(node, Alt):
        return any(_nullable(option) for option in node.options)
    return node.lo == 0 or _nullable(node.item)


def _charset(items: list[Any], c: Any) -> Ranges:
    negate = False
    ranges: list[tuple[int, int]] = []
    categories: dict[Any, tuple[Ranges, bool]] = {
        c.CATEGORY_DIGIT: (_DIGIT, False),
        c.CATEGORY_NOT_DIGIT: (_DIGIT, True),
        c.CATEGORY_WORD: (_WORD, False),
        c.CATEGORY_NOT_WORD: (_WORD, True),
        c.CATEGORY_SPACE: (_SPACE, False),
        c.CATEGORY_NOT_SPACE: (_SPACE, True),
    }
    for op, av in items:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            ranges.append((av, av))
        elif op is c.RANGE:
            ranges.append(av)
        elif op is c.CATEGORY and av in categories:
            base, inverted = categories[av]
            ranges.extend(_complement(base) if inverted else base)
        else:
            raise Unsupported(str(op))
    merged = _normalize(ranges)
    return _complement(merged) if negate else merged


def _normalize(ranges: list[tuple[int, int]] | Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in _normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_UNICODE:
        out.append((start, _MAX_UNICODE))
    return tuple(out)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return _normalize(out)


def _contains(ranges: Ranges, point: int) -> bool:
    return any(lo <= point <= hi for lo, hi in ranges)


# --- how many positions stay alive: a bounded subset simulation ----------------


def max_active(node: Node) -> int:
    """The most character positions alive at once over any input, with counted
    repeats unrolled up to ``_UNROLL``; past the exploration budget the answer is
    taken as "too many" (MAX_ACTIVE + 1)."""
    nfa = _Nfa()
    try:
        start, _end = nfa.build(node)
    except _TooBig:
        return MAX_ACTIVE + 1
    atoms = _atoms(nfa.sets)
    first = nfa.closure({start})
    seen = {first}
    todo = [first]
    worst = len(first)
    while todo:
        current = todo.pop()
        for point in atoms:
            moved = {nfa.edges[s][1] for s in current if _contains(nfa.edges[s][0], point)}
            if not moved:
                continue
            nxt = nfa.closure(moved)
            worst = max(worst, len(nxt))
            if worst > MAX_ACTIVE or len(seen) > _MAX_SUBSETS:
                return MAX_ACTIVE + 1
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return worst


class _TooBig(Exception):
    pass


class _Nfa:
    """Thompson automaton: ``edges[s] = (set, target)`` for consuming states,
    ``eps[s]`` for the rest. A closure keeps only consuming states."""

    def __init__(self) -> None:
        self.edges: dict[int, tuple[Ranges, int]] = {}
        self.eps: dict[int, list[int]] = {}
        self.sets: list[Ranges] = []
        self._count = 0

    def _state(self) -> int:
        self._count += 1
        if self._count > _MAX_STATES:
            raise _TooBig
        return self._count

    def build(self, node: Node) -> tuple[int, int]:
        a, b = self._state(), self._state()
        if isinstance(node, CharSet):
            self.edges[a] = (node.ranges, b)
            self.sets.append(node.ranges)
        elif isinstance(node, Seq):
            self._link(a, b, node.items)
        elif isinstance(node, Alt):
            for option in node.options:
                s, e = self.build(option)
                self.eps.setdefault(a, []).append(s)
                self.eps.setdefault(e, []).append(b)
        else:
            lo = min(node.lo, _UNROLL)
            hi = None if node.hi is None else min(node.hi, max(lo, _UNROLL))
            here = a
            for _ in range(lo):
                s, e = self.build(node.item)
                self.eps.setdefault(here, []).append(s)
                here = e
            if hi is None:
                s, e = self.build(node.item)
                self.eps.setdefault(here, []).extend([s, b])
                self.eps.setdefault(e, []).append(here)
            else:
                for _ in range(hi - lo):
                    s, e = self.build(node.item)
                    self.eps.setdefault(here, []).extend([s, b])
                    here = e
                self.eps.setdefault(here, []).append(b)
        return a, b

    def _link(self, a: int, b: int, items: tuple[Node, ...]) -> None:
        here = a
        for item in items:
            s, e = self.build(item)
            self.eps.setdefault(here, []).append(s)
            here = e
        self.eps.setdefault(here, []).append(b)

    def closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            for nxt in self.eps.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(s for s in seen if s in self.edges)


def _atoms(sets: list[Ranges]) -> list[int]:
    """One code point from each class of characters no set tells apart."""
    cuts = {0}
    for ranges in sets:
        for lo, hi in ranges:
            cuts.update((lo, hi + 1))
    return sorted(point for point in cuts if point <= _MAX_UNICODE)


# --- GBNF ----------------------------------------------------------------------


def _emit(node: Node, add_rule: Callable[[str], str]) -> str:
    if isinstance(node, CharSet):
        return _emit_set(node.ranges)
    if isinstance(node, Seq):
        return "(" + " ".join(_emit(item, add_rule) for item in node.items) + ")"
    if isinstance(node, Alt):
        return "(" + " | ".join(_emit(option, add_rule) or '""' for option in node.options) + ")"
    item = add_rule(_emit(node.item, add_rule))
    return repeat(item, node.lo, node.hi, add_rule)


def _emit_set(ranges: Ranges) -> str:
    safe = _intersect(ranges, _SAFE)
    options = []
    if safe:
        options.append("[" + "".join(_class_range(lo, hi) for lo, hi in safe) + "]")
    # What JSON writes with a backslash: the quote, the backslash, and tab, newline
    # and the like (other control characters, ``\\u0001``, are not offered).
    escaped = [(_QUOTE, '\\"'), (_BACKSLASH, "\\\\")]
    escaped += [(point, letter) for point, letter in _SHORT_ESCAPES.items()]
    letters = "".join(letter for point, letter in escaped if _contains(ranges, point))
    if letters:
        options.append(f'"\\\\" [{letters}]')
    if not options:  # only control characters that are not offered
        return "[^\\x00-\\U0010FFFF]"  # matches nothing
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"


_SHORT_ESCAPES = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r"}


def _class_range(lo: int, hi: int) -> str:
    return _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"


def _class_char(point: int) -> str:
    if point < 0x80 and chr(point).isalnum():
        return chr(point)
    return f"\\x{point:02X}" if point < 0x100 else f"\\U{point:08X}"

"""Bounded repetition in GBNF that stays small for any bound.

llama.cpp expands ``x{m,n}`` into ``n`` rules and refuses more than 2000; the
Python schema converter of llama-cpp-python writes ``(x (x (x ...)?)?)?``
instead, which llama.cpp's recursive parser cannot even read for large ``n``
(a ``maxLength`` of 524288, in Claude Code's own tools, overflowed its stack).

``repeat`` writes ``m..n`` copies of a rule with blocks of ``BLOCK`` copies:
``n = q·B + r`` copies are either fewer than ``q`` whole blocks followed by
fewer than ``B`` copies, or exactly ``q`` blocks followed by at most ``r``.
Every length has one parse, so at most a few parse stacks are ever alive,
and a bound of 10^6 costs a few thousand rules.
"""

from __future__ import annotations

from collections.abc import Callable

BLOCK = 500  # copies written as one llama.cpp repetition (its limit is 2000 rules)


def repeat(item: str, lo: int, hi: int | None, add_rule: Callable[[str], str]) -> str:
    """GBNF for ``lo`` to ``hi`` copies (``None``: no upper bound) of the rule
    named ``item``. ``add_rule`` names a rule body and returns the name."""
    parts = [_exactly(item, lo, add_rule)]
    parts.append(f"{item}*" if hi is None else _up_to(item, max(0, hi - lo), add_rule))
    return _join(parts)


def _join(parts: list[str]) -> str:
    text = " ".join(part for part in parts if part)
    return text or '""'


def _exactly(item: str, n: int, add_rule: Callable[[str], str]) -> str:
    if n <= BLOCK:
        return "" if n == 0 else item if n == 1 else f"{item}{{{n}}}"
    blocks, rest = divmod(n, BLOCK)
    block = add_rule(f"{item}{{{BLOCK}}}")
    return _join([_exactly(block, blocks, add_rule), _exactly(item, rest, add_rule)])


def _up_to(item: str, n: int, add_rule: Callable[[str], str]) -> str:
    if n <= BLOCK:
        return "" if n == 0 else f"{item}?" if n == 1 else f"{item}{{0,{n}}}"
    blocks, rest = divmod(n, BLOCK)
    block = add_rule(f"{item}{{{BLOCK}}}")
    short = _join([_up_to(block, blocks - 1, add_rule), _up_to(item, BLOCK - 1, add_rule)])
    full = _join([_exactly(block, blocks, add_rule), _up_to(item, rest, add_rule)])
    return f"({short} | {full})"

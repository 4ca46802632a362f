"""Strict JSON for request bodies: a body means one thing, and its strings are text.

Python's ``json`` keeps the last of two equal keys and accepts lone UTF-16
surrogates (``"\\ud800"``), which are not Unicode text: they cannot be encoded
as UTF-8, so they fail wherever the string is written later (the batch
database, a log line, the response). The Messages endpoint's parser
(pydantic) refuses lone surrogates as invalid JSON and ``parse`` refuses
duplicate keys; bodies parsed here are held to the same rules, and the
message names the path of the problem (``requests.0.params.model: ...``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from parley.errors import InvalidRequestError


class _Object(dict[str, Any]):
    """A JSON object that remembers the first key it was given twice."""

    __slots__ = ("duplicate",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.duplicate: str | None = None
        if len(self) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.duplicate = key
                    break
                seen.add(key)


def _parse(body: bytes) -> tuple[Any, bool]:
    duplicated = False

    def pairs(items: list[tuple[str, Any]]) -> _Object:
        nonlocal duplicated
        obj = _Object(items)
        duplicated = duplicated or obj.duplicate is not None
        return obj

    return json.loads(body, object_pairs_hook=pairs), duplicated


def loads(body: bytes) -> Any:
    """The JSON value of ``body``, or a 400: not JSON, or a key twice in one object.

    Objects come back as ``dict`` (a subclass); strings may still hold lone
    surrogates, which ``dumps`` refuses where the value is stored.
    """
    try:
        data, duplicated = _parse(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if duplicated:
        _refuse_duplicate(data)
    return data


def refuse_duplicate_keys(body: bytes) -> None:
    """The duplicate-key refusal alone, for a body another parser has accepted."""
    try:
        data, duplicated = _parse(body)
    except (ValueError, RecursionError):  # the other parser's verdict stands
        return
    if duplicated:
        _refuse_duplicate(data)


def dumps(value: Any, path: str) -> str:
    """Compact JSON text of a parsed ``value`` (found at ``path``), refusing a lone
    surrogate anywhere in it with a 400 naming where."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # rare: only now walk the value to say where
        where, what = _first_surrogate(value, path)
        raise InvalidRequestError(
            f"{where}: {what} has a lone UTF-16 surrogate, which is not Unicode text "
            "(escape characters outside the BMP as a surrogate pair)"
        ) from None
    return text


def shown(text: str) -> str:
    """``text`` safe to put in a message: lone surrogates become ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _join(path: str, part: str | int) -> str:
    return f"{path}.{part}" if path else str(part)


def _children(path: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield _join(path, shown(key)), item
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield _join(path, i), item


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every value under ``value`` with its path, in document order (no recursion:
    nesting is as deep as the parser allowed)."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        yield where, item
        stack.extend(reversed(list(_children(where, item))))


def _refuse_duplicate(data: Any) -> None:
    for where, item in _walk(data, ""):
        if isinstance(item, _Object) and item.duplicate is not None:
            key = shown(item.duplicate)
            if not where:
                raise InvalidRequestError(
                    f"the request body has the key '{key}' twice in one object; "
                    "each key may appear once"
                )
            raise InvalidRequestError(
                f"{where}: the object has the key '{key}' twice; each key may appear once"
            )
    raise AssertionError("a duplicate key was reported but not found")


def _first_surrogate(value: Any, path: str) -> tuple[str, str]:
    for where, item in _walk(value, path):
        if isinstance(item, dict):
            for key in item:
                if shown(key) != key:
                    return _join(where, shown(key)), "the key"
        elif isinstance(item, str) and shown(item) != item:
            return where, "the string"
    raise AssertionError("a lone surrogate was reported but not found")

"""Options an engine declares for itself, so a new engine's settings need no CLI edit.

An engine module defines a frozen dataclass of typed fields with defaults
(its ``Options``) and reads them with ``engine_options(settings, name,
Options, base)``. Values come, lowest first, from the dataclass defaults,
``base`` (for the llama.cpp engine: its long-standing flat settings and
flags, such as ``--n-ctx``), the config file's ``[engines.NAME]`` table, and
``--engine-opt KEY=VALUE`` / ``PARLEY_ENGINE_OPTS`` (``KEY=VALUE,...``) for
the engine being served. A ``tuple[X, ...]`` field takes a TOML array or, as
one string, comma-separated items (``--engine-opt url=http://a,http://b``;
not through ``PARLEY_ENGINE_OPTS``, whose pairs are comma-separated too).
An unknown key is a start-up error that lists the engine's options and the
closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from parley.config import ConfigError

if TYPE_CHECKING:
    from parley.config import Settings

T = TypeVar("T")


def engine_options(
    settings: Settings, engine: str, kind: type[T], base: Mapping[str, Any] | None = None
) -> T:
    """The engine's options from every source (see the module docstring)."""
    raw = {**(base or {}), **settings.engine_options.get(engine, {})}
    return parse(kind, raw, engine=engine)


def parse(kind: type[T], raw: Mapping[str, Any], *, engine: str) -> T:
    assert dataclasses.is_dataclass(kind), "engine options are a dataclass"
    hints = typing.get_type_hints(kind)
    known = {f.name for f in dataclasses.fields(kind)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"engine '{engine}' has no option '{key}'{hint} "
                f"(its options: {', '.join(sorted(known))})"
            )
        values[key] = _coerce(hints[key], value, f"engine '{engine}' option '{key}'")
    return kind(**values)


def _coerce(kind: Any, value: Any, where: str) -> Any:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis:
        # A list: a TOML array, or one string of comma-separated items (--engine-opt).
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: cannot use {value!r}: expected a list")
        return tuple(
            _coerce(args[0], i.strip() if isinstance(i, str) else i, where)
            for i in items
            if not (isinstance(i, str) and not i.strip())
        )
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError("expected true or false")
            return text in {"1", "true", "yes", "on"}
        if kind is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r}: {exc}") from exc
    return value

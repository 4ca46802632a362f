"""Engines chosen by name: an import-string table, extended by entry points.

Built-ins are listed here and loaded through the same path as third-party
engines, which register in the ``parley.engines`` entry-point group with a
value of ``module:factory``. A factory takes the ``Settings`` and returns an
``Engine``; heavy dependencies are imported only when an engine is selected.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, cast

from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.config import Settings
    from parley.engines.base import Engine

BUILTIN_ENGINES = {
    "llamacpp": "parley.engines.llamacpp:from_settings",
    "llamaserver": "parley.engines.llamaserver:from_settings",
    "openai": "parley.engines.openai_chat:from_settings",
    "vllm": "parley.engines.vllm:from_settings",
    "scripted": "parley.engines.scripted:from_settings",
    "upstream": "parley.engines.upstream.auto:from_settings",
}

EngineFactory = Callable[["Settings"], "Engine"]


class UnknownEngineError(ParleyError):
    """Start-up error: no engine of that name."""


def available() -> dict[str, str]:
    table = dict(BUILTIN_ENGINES)
    for ep in entry_points(group="parley.engines"):
        table.setdefault(ep.name, ep.value)
    return table


def load(name: str) -> EngineFactory:
    table = available()
    if name not in table:
        raise UnknownEngineError(f"unknown engine '{name}'; available: {', '.join(sorted(table))}")
    module_name, _, attr = table[name].partition(":")
    module = importlib.import_module(module_name)
    return cast(EngineFactory, getattr(module, attr))

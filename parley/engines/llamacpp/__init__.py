"""The embedded engine: llama.cpp through llama-cpp-python, with continuous batching.

What lives here is private to the engine: the native bindings (``native``),
the model file (``model_file``), the decode loop (``scheduler``, with its
waiting queue ``waiting``, admission ``placement``, batch assembly ``step``,
sequences ``sequence``, slots ``slots``, jobs ``jobs`` and event delivery
``delivery``), the prompt cache
(``prefix_cache``), the chat template (``chat_template``), the model's output
protocol (``output``: thinking, text, tool calls) and its grammar
(``grammar`` over ``grammar_json``, ``grammar_regex``, ``grammar_repeat``).
The rest of parley sees ``LlamaCppEngine`` through ``parley.engines.base``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from parley.errors import ModelLoadError

if TYPE_CHECKING:
    from parley.engines.llamacpp.engine import LlamaCppEngine, from_settings
    from parley.engines.llamacpp.model_file import EMBEDDED_ID, check_gguf, embedded_model_path

__all__ = [
    "EMBEDDED_ID",
    "LlamaCppEngine",
    "ModelLoadError",
    "check_gguf",
    "embedded_model_path",
    "from_settings",
]

# Imported when first asked for: the upstream engines use this package's
# rendering and output modules, and must not load llama.cpp's bindings (and
# the engine) for it; a chat-mode upstream needs no llama.cpp at all.
_LAZY = {
    "LlamaCppEngine": "parley.engines.llamacpp.engine",
    "from_settings": "parley.engines.llamacpp.engine",
    "EMBEDDED_ID": "parley.engines.llamacpp.model_file",
    "check_gguf": "parley.engines.llamacpp.model_file",
    "embedded_model_path": "parley.engines.llamacpp.model_file",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

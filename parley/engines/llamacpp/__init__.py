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

from parley.engines.llamacpp.engine import LlamaCppEngine, from_settings
from parley.engines.llamacpp.model_file import EMBEDDED_ID, check_gguf, embedded_model_path
from parley.engines.llamacpp.vocab import ModelLoadError

__all__ = [
    "EMBEDDED_ID",
    "LlamaCppEngine",
    "ModelLoadError",
    "check_gguf",
    "embedded_model_path",
    "from_settings",
]

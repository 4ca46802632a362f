"""llama.cpp's ``llama-server`` as an upstream, in tokens mode.

parley renders and tokenizes the prompt itself (the GGUF's vocabulary, no
weights: ``llamacpp.vocab``), sends the token ids with its own tool grammar
to ``POST /completion`` and reads the stream through its own output parser,
so counts are exact, user text cannot forge turns, and tools, stop
sequences, thinking budgets and prefill continuation behave as on the
embedded engine. llama-server's own ``/v1/messages`` is not used: it loses
the forced tool's name and misreports stop sequences (shared notes).
"""

from parley.engines.llamaserver.engine import LlamaServerEngine, from_settings

__all__ = ["LlamaServerEngine", "from_settings"]

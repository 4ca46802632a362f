"""vLLM's OpenAI-compatible server as an upstream, in tokens mode.

parley renders and tokenizes the prompt itself with the GGUF's vocabulary
(the model vLLM serves must have the same tokenizer), sends the token ids
to ``POST /v1/completions`` with its own tool grammar as a structured
output, and reads the text back through its own output parser, as the
llama-server engine does (``upstream.tokens``). vLLM's ``/v1/messages`` and
chat path are not used: they drop ``cache_control``, do not continue a
prefill and parse special tokens in user text (shared notes).
"""

from parley.engines.vllm.engine import VllmEngine, from_settings

__all__ = ["VllmEngine", "from_settings"]

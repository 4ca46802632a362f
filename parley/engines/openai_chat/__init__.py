"""Any OpenAI-compatible ``/v1/chat/completions`` server as an upstream, in chat mode.

The upstream renders the prompt with its own chat template and parses the
model's tool calls and reasoning; parley converts the ``Conversation`` into a
chat request in the upstream's dialect (``dialects``, ``request``) and reads
the streamed answer back as engine events (``reply``), so signatures, the
event state machine, errors and limits stay parley's. What an upstream
cannot do is refused with a 400 naming it, never dropped. Kinds: vLLM,
SGLang, llama-server, Ollama and a generic OpenAI server (README).
"""

from parley.engines.openai_chat.engine import OpenAIChatEngine, from_settings

__all__ = ["OpenAIChatEngine", "from_settings"]

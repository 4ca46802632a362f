"""What each kind of OpenAI-compatible upstream takes and says, as data.

One ``Dialect`` a kind (``vllm``, ``sglang``, ``llamaserver``, ``ollama``,
``openai``), read by the request builder and the reply reader instead of
branching on names. The fields follow the upstreams' documented wire formats
(shared upstream notes); where an upstream lacks a feature its field is
``None`` and parley either does the work itself (stop sequences, a single
tool call) or refuses the request with a 400 naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["vllm", "sglang", "llamaserver", "ollama", "openai"]
KINDS: tuple[Kind, ...] = ("vllm", "sglang", "llamaserver", "ollama", "openai")


@dataclass(frozen=True)
class Dialect:
    kind: Kind
    # Exact prompt count: the path taking the chat body, and the answer's field
    # (``token_ids``: a list to count, else a number). None: parley estimates.
    count_path: str | None = None
    count_field: str = ""
    count_keys: tuple[str, ...] | None = None  # the body's fields it takes (None: all)
    # Which stop sequence ended the answer: the choice's field naming it. None:
    # ``stop`` is not forwarded and parley matches the stop sequences itself.
    stop_field: str | None = None
    # tool_choice: "object" takes {"type": "function", "function": {"name": N}};
    # "string" only auto/none/required (a named tool is sent alone + "required");
    # None: no tool_choice at all (only auto can be served).
    tool_choice: Literal["object", "string"] | None = "object"
    strict_tools: bool = False  # arguments follow the schema only with strict: true
    continues_prefill: bool = False  # continue_final_message + add_generation_prompt
    template_kwargs: bool = False  # chat_template_kwargs (enable_thinking)
    # The request field bounding a reasoning section. None: thinking is refused.
    budget_field: str | None = None
    history_reasoning: str = "reasoning_content"  # earlier thinking, sent back
    top_k: bool = True  # takes top_k
    extra: tuple[tuple[str, Any], ...] = ()  # always sent
    thinking_extra: tuple[tuple[str, Any], ...] = ()  # sent when thinking


DIALECTS: dict[Kind, Dialect] = {
    "vllm": Dialect(
        "vllm",
        count_path="/v1/chat/completions/render",
        count_field="token_ids",
        stop_field="stop_reason",
        strict_tools=True,
        continues_prefill=True,
        template_kwargs=True,
        budget_field="thinking_token_budget",
        history_reasoning="reasoning",
        thinking_extra=(("include_reasoning", True),),
    ),
    "sglang": Dialect(
        "sglang",
        count_path="/v1/tokenize",
        count_field="count",
        # Its documented fields (serving_tokenize.py); the rest of a chat body is not.
        count_keys=(
            "model",
            "messages",
            "tools",
            "tool_choice",
            "continue_final_message",
            "chat_template_kwargs",
        ),
        stop_field="matched_stop",
        continues_prefill=True,
        template_kwargs=True,
    ),
    "llamaserver": Dialect(
        "llamaserver",
        count_path="/v1/chat/completions/input_tokens",
        count_field="input_tokens",
        tool_choice="string",
        continues_prefill=True,
        template_kwargs=True,
        budget_field="thinking_budget_tokens",
        # llama-server's defaults are not the API's (top-k 40, min-p 0.05): pinned.
        extra=(("top_k", 0), ("min_p", 0.0), ("repeat_penalty", 1.0), ("cache_prompt", True)),
    ),
    "ollama": Dialect("ollama", tool_choice=None, history_reasoning="reasoning", top_k=False),
    "openai": Dialect("openai", top_k=False),
}


def count_of(dialect: Dialect, answer: Any) -> int:
    """The prompt's token count in a counting endpoint's answer."""
    if isinstance(answer, list) and answer:  # a batch of one
        answer = answer[0]
    if not isinstance(answer, dict):
        raise ValueError(f"not a count: {str(answer)[:200]}")
    value = answer.get(dialect.count_field)
    if value is None and dialect.count_field == "count":
        value = answer.get("tokens")
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"no '{dialect.count_field}' in {str(answer)[:200]}")


def detect(models: dict[str, Any] | None, props: dict[str, Any] | None, ollama: bool) -> Kind:
    """The kind an upstream is, from its ``/v1/models``, ``/props`` (llama-server
    only) and whether ``/api/version`` answered (Ollama only)."""
    if props is not None and "default_generation_settings" in props:
        return "llamaserver"
    owner = ""
    for model in (models or {}).get("data") or []:
        owner = str(model.get("owned_by") or "")
        break
    if owner in ("vllm", "sglang"):
        return owner  # type: ignore[return-value]
    if owner == "llamacpp":
        return "llamaserver"
    if ollama:
        return "ollama"
    return "openai"

"""The API's request rules that pydantic cannot express: what is refused, with
the message the API gives (or parley's, naming the path, where it differs).

Each check takes the validated request (or the turns built from it) and
raises ``InvalidRequestError`` / ``UnsupportedFeatureError``.
"""

from __future__ import annotations

from typing import Any

from parley.conversation.types import Capabilities, ToolCallPart, ToolResultPart, Turn
from parley.errors import InvalidRequestError, UnsupportedFeatureError
from parley.wire import requests as wr


def refuse_unsupported(req: wr.CountTokensRequest, caps: Capabilities, *, model: str) -> None:
    if isinstance(req, wr.CreateMessageRequest):
        for name in req.unsupported_fields():
            raise UnsupportedFeatureError(f"{name}: this parameter is not supported by parley yet")
    elif req.mcp_servers is not None:
        raise UnsupportedFeatureError("mcp_servers: this parameter is not supported by parley yet")
    thinking = req.thinking
    if isinstance(thinking, wr.ThinkingEnabled):
        max_tokens = getattr(req, "max_tokens", None)
        if thinking.budget_tokens < 1024:
            raise InvalidRequestError(
                "thinking.budget_tokens: Input should be greater than or equal to 1024"
            )
        if max_tokens is not None and thinking.budget_tokens >= max_tokens:
            raise InvalidRequestError(
                "max_tokens: must be greater than thinking.budget_tokens "
                f"({max_tokens} <= {thinking.budget_tokens})"
            )
    if isinstance(thinking, wr.ThinkingEnabled | wr.ThinkingAdaptive):
        if isinstance(req.tool_choice, wr.ToolChoiceAny | wr.ToolChoiceTool):
            raise InvalidRequestError(
                "Thinking may not be enabled when tool_choice forces tool use."
            )
        if isinstance(req, wr.CreateMessageRequest):
            if req.temperature is not None and req.temperature != 1.0:
                raise InvalidRequestError(
                    "`temperature` may only be set to 1 when thinking is enabled."
                )
            if req.top_k is not None:
                raise InvalidRequestError("`top_k` may not be set when thinking is enabled.")
            if req.top_p is not None and req.top_p < 0.95:
                raise InvalidRequestError(
                    "`top_p` must be greater than or equal to 0.95 when thinking is enabled."
                )
    if req.output_config is not None and req.output_config.format is not None:
        raise UnsupportedFeatureError(
            "output_config.format: structured outputs are not supported by parley yet"
        )
    if req.tools and not caps.tools:
        raise UnsupportedFeatureError(f"tools: model '{model}' does not support tool use yet")


MAX_BREAKPOINTS = 4


def check_breakpoints(req: wr.CountTokensRequest) -> None:
    """At most four ``cache_control`` breakpoints, the top-level one included."""
    blocks: list[Any] = list(req.tools or [])
    if isinstance(req.system, list):
        blocks.extend(req.system)
    for message in req.messages:
        if isinstance(message.content, list):
            blocks.extend(message.content)
    found = sum(1 for b in blocks if getattr(b, "cache_control", None) is not None)
    found += req.cache_control is not None
    if found > MAX_BREAKPOINTS:
        raise InvalidRequestError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {found}."
        )


# Budgets parley gives adaptive thinking, by output_config.effort.
EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 6144, "max": 8192}


def thinking_budget(req: wr.CountTokensRequest) -> int | None:
    thinking = req.thinking
    if isinstance(thinking, wr.ThinkingEnabled):
        return thinking.budget_tokens
    if isinstance(thinking, wr.ThinkingAdaptive):
        effort = req.output_config.effort if req.output_config is not None else None
        budget = EFFORT_BUDGETS[effort or "medium"]
        max_tokens = getattr(req, "max_tokens", None)
        # Leave room for an answer within max_tokens.
        return min(budget, max(1, max_tokens // 2)) if max_tokens is not None else budget
    return None


def check_tool_results(turns: list[Turn]) -> None:
    for i, turn in enumerate(turns):
        results = [p for p in turn.parts if isinstance(p, ToolResultPart)]
        if not results:
            continue
        previous = turns[i - 1] if i > 0 and turns[i - 1].role == "assistant" else None
        calls = {p.id for p in previous.parts if isinstance(p, ToolCallPart)} if previous else set()
        for result in results:
            if result.tool_use_id not in calls:
                raise InvalidRequestError(
                    f"messages: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{result.tool_use_id}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )

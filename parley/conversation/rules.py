"""The API's request rules that pydantic cannot express: what is refused, with
the message the API gives (or parley's, naming the path, where it differs).

Each check takes the validated request (or the turns built from it) and
raises ``InvalidRequestError`` / ``UnsupportedFeatureError``.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from parley.conversation.types import Capabilities
from parley.errors import InvalidRequestError, UnsupportedFeatureError
from parley.wire import content as wc
from parley.wire import requests as wr
from parley.wire import server_tools as ws


def refuse_unsupported(req: wr.CountTokensRequest, caps: Capabilities, *, model: str) -> None:
    for name in req.unsupported_fields():
        raise UnsupportedFeatureError(f"{name}: this parameter is not supported by parley yet")
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
    answer = req.answer_format
    if answer is not None and not caps.structured_outputs:
        raise UnsupportedFeatureError(
            f"output_config.format: model '{model}' does not support structured outputs"
        )
    if answer is not None:
        where = "output_format" if req.output_format is not None else "output_config.format"
        check_schema(answer.schema_, f"{where}.schema")
    if req.tools and not caps.tools:
        raise UnsupportedFeatureError(f"tools: model '{model}' does not support tool use yet")
    check_server_tools(req)


def check_server_tools(req: wr.CountTokensRequest) -> None:
    """Server tools are counted (as the model is told of them) but never run: create
    refuses each by name. A toolset must name one of ``mcp_servers``."""
    servers = {s.name for s in req.mcp_servers or ()}
    for i, tool in enumerate(req.tools or ()):
        if isinstance(tool, ws.ServerTool) and isinstance(req, wr.CreateMessageRequest):
            raise UnsupportedFeatureError(
                f"tools.{i}: server tool '{tool.type}' is not supported by parley yet"
            )
        if isinstance(tool, ws.MCPToolset) and tool.mcp_server_name not in servers:
            raise InvalidRequestError(
                f"tools.{i}.mcp_server_name: no server named '{tool.mcp_server_name}' "
                "in mcp_servers"
            )


def check_schema(schema: dict[str, Any], path: str) -> None:
    """A JSON Schema (2020-12, or the draft its ``$schema`` names) that is itself
    valid, or a 400 naming where it is not. Without a ``$schema``, one valid under
    draft 7 or 4 is taken too (draft 4's boolean ``exclusiveMinimum``, which the
    grammar reads)."""
    declared = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        declared.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        if "$schema" not in schema:
            for older in (jsonschema.Draft7Validator, jsonschema.Draft4Validator):
                if older(older.META_SCHEMA).is_valid(schema):
                    return
        where = "".join(f".{p}" for p in exc.path)
        message = f"{path}{where}: not a valid JSON Schema: {exc.message}"
        raise InvalidRequestError(message) from None


def check_answer_format(req: wr.CountTokensRequest, prefill: bool) -> None:
    """What structured outputs cannot be combined with, as on the API."""
    if req.answer_format is None:
        return
    if prefill:
        raise InvalidRequestError(
            "messages: prefilling the assistant message is not supported with "
            "output_config.format (structured outputs)"
        )
    for i, message in enumerate(req.messages):
        for j, block in enumerate(_blocks(message)):
            config = getattr(block, "citations", None)
            if getattr(config, "enabled", False):
                raise InvalidRequestError(
                    f"messages.{i}.content.{j}.citations: citations are not supported with "
                    "output_config.format (structured outputs)"
                )


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


# Budgets parley gives adaptive thinking, by output_config.effort (the top-level one or
# a system message's, ``CountTokensRequest.effort``).
EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 6144, "max": 8192}


def thinking_budget(req: wr.CountTokensRequest) -> int | None:
    thinking = req.thinking
    if isinstance(thinking, wr.ThinkingEnabled):
        return thinking.budget_tokens
    if isinstance(thinking, wr.ThinkingAdaptive):
        budget = EFFORT_BUDGETS[req.effort() or "medium"]
        max_tokens = getattr(req, "max_tokens", None)
        # Leave room for an answer within max_tokens.
        return min(budget, max(1, max_tokens // 2)) if max_tokens is not None else budget
    return None


def check_tool_pairing(messages: list[wr.Message]) -> None:
    """Each tool_use answered by a tool_result at the start of the next user turn, and
    each tool_result answering a tool_use of the previous assistant turn, as the API
    requires. Consecutive messages of one role count as one turn (they are merged);
    a trailing assistant turn has no next turn to check (it is a prefill). System
    messages are not turns of the conversation and are skipped."""
    groups: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            continue
        if groups and messages[groups[-1][0]].role == message.role:
            groups[-1].append(i)
        else:
            groups.append([i])
    for g, group in enumerate(groups):
        if messages[group[0]].role != "user":
            continue
        previous = groups[g - 1] if g > 0 else []
        calls = [
            (i, block.id)
            for i in previous
            for block in _blocks(messages[i])
            if isinstance(block, wc.ToolUseBlock)
        ]
        ids = {call_id for _, call_id in calls}
        leading: set[str] = set()
        in_lead = True
        for i in group:
            for m, block in enumerate(_blocks(messages[i])):
                if not isinstance(block, wc.ToolResultBlock):
                    in_lead = False
                    continue
                if block.tool_use_id not in ids:
                    raise InvalidRequestError(
                        f"messages.{i}.content.{m}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block.tool_use_id}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )
                if in_lead:
                    leading.add(block.tool_use_id)
        missing = [(i, call_id) for i, call_id in calls if call_id not in leading]
        if missing:
            raise InvalidRequestError(
                f"messages.{missing[0][0]}: `tool_use` ids were found without `tool_result` "
                f"blocks immediately after: {', '.join(c for _, c in missing)}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )


def _blocks(message: wr.Message) -> list[Any]:
    return list(message.content) if isinstance(message.content, list) else []

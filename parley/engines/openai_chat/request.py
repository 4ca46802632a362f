"""A ``Conversation`` as an OpenAI ``/v1/chat/completions`` body, in a kind's dialect.

``chat_body`` is the conversation's part of the body (messages, tools,
tool_choice, template switches): the same for counting and for generating,
so the upstream renders the same prompt both times. ``sampling`` adds what
only a generation takes. What the upstream cannot do is refused here with
a 400 naming it, before anything is sent.
"""

from __future__ import annotations

import json
from typing import Any

from parley.conversation import (
    Conversation,
    ImagePart,
    Part,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
    Turn,
)
from parley.engines.base import SamplingParams
from parley.engines.openai_chat.dialects import Dialect
from parley.errors import UnsupportedFeatureError

Body = dict[str, Any]


def forces_call(conversation: Conversation) -> bool:
    return bool(conversation.tools) and conversation.tool_choice in ("any", "tool")


def chat_body(
    conversation: Conversation, dialect: Dialect, *, model: str, call_prefix: str = ""
) -> Body:
    """The conversation's part of the request (see the module docstring).

    ``call_prefix`` is prefilled when ``tool_choice`` forces a call: llama-server's
    ``required`` lets a model write text before its call, the text that opens a
    call in its template makes the call come first, as the API's forced choice does.
    """
    refuse_unsupported(conversation, dialect)
    body: Body = {"model": model, "messages": messages(conversation, dialect)}
    prefill = conversation.prefill
    if not prefill and call_prefix and forces_call(conversation) and dialect.continues_prefill:
        prefill = call_prefix
    if prefill:
        body["messages"].append({"role": "assistant", "content": prefill})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body.update(_tools(conversation, dialect))
    if conversation.answer_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": conversation.answer_schema, "strict": True},
        }
    thinking = conversation.thinking_budget is not None
    if dialect.template_kwargs:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if thinking and dialect.budget_field is not None:
        body[dialect.budget_field] = conversation.thinking_budget
        body.update(dialect.thinking_extra)
    return body


def refuse_unsupported(conversation: Conversation, dialect: Dialect) -> None:
    upstream = f"the upstream ({dialect.kind})"
    if forces_call(conversation) and dialect.tool_choice is None:
        raise UnsupportedFeatureError(
            f"tool_choice: {upstream} takes no tool_choice, so a call cannot be forced "
            "(only 'auto' and 'none' are served)"
        )
    if conversation.prefill and not dialect.continues_prefill:
        raise UnsupportedFeatureError(
            f"messages: {upstream} cannot continue a final assistant message (a prefill)"
        )
    if conversation.thinking_budget is not None and dialect.budget_field is None:
        raise UnsupportedFeatureError(
            f"thinking: {upstream} cannot bound a reasoning section to budget_tokens, "
            "so extended thinking is not served"
        )


def sampling(params: SamplingParams, dialect: Dialect, *, max_tokens: int) -> Body:
    """What a generation adds to ``chat_body``: budget, samplers, stops, streaming."""
    body: Body = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": params.temperature,
        "top_p": 1.0 if params.top_p is None else params.top_p,
        **dict(dialect.extra),
    }
    if params.top_k is not None:
        if not dialect.top_k:
            raise UnsupportedFeatureError(f"top_k: the upstream ({dialect.kind}) takes no top_k")
        body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop_sequences and dialect.stop_field is not None:
        body["stop"] = list(params.stop_sequences)
    return body


def messages(conversation: Conversation, dialect: Dialect) -> list[Body]:
    out: list[Body] = []
    system = "\n\n".join(s for s in (conversation.system, conversation.answer_instruction) if s)
    if system:
        out.append({"role": "system", "content": system})
    for turn in conversation.turns:
        if turn.role == "assistant":
            out.append(_assistant(turn, dialect))
        elif turn.role == "system":
            out.append({"role": "system", "content": turn.text})
        else:
            out.extend(_user(turn.parts))
    return out


def _assistant(turn: Turn, dialect: Dialect) -> Body:
    calls = [
        {
            "id": p.id,
            "type": "function",
            "function": {"name": p.name, "arguments": json.dumps(p.input, ensure_ascii=False)},
        }
        for p in turn.parts
        if isinstance(p, ToolCallPart)
    ]
    text = turn.text
    message: Body = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    reasoning = "".join(p.text for p in turn.parts if isinstance(p, ThinkingPart))
    if reasoning:
        message[dialect.history_reasoning] = reasoning
    return message


def _user(parts: tuple[Part, ...]) -> list[Body]:
    """Tool results as ``tool`` messages, the rest as user messages, in order."""
    out: list[Body] = []
    pending: list[TextPart | ImagePart] = []

    def flush() -> None:
        if pending:
            out.append({"role": "user", "content": _content(pending)})
            pending.clear()

    for part in parts:
        if isinstance(part, ToolResultPart):
            flush()
            # OpenAI's tool messages have no error flag: the text says it.
            text = f"Error: {part.text}" if part.is_error else part.text
            out.append({"role": "tool", "tool_call_id": part.tool_use_id, "content": text})
        elif isinstance(part, TextPart | ImagePart):
            pending.append(part)
    flush()
    return out


def _content(parts: list[TextPart | ImagePart]) -> str | list[Body]:
    if all(isinstance(p, TextPart) for p in parts):
        return "\n\n".join(p.text for p in parts if isinstance(p, TextPart))
    return [
        {"type": "text", "text": p.text}
        if isinstance(p, TextPart)
        else {"type": "image_url", "image_url": {"url": f"data:{p.media_type};base64,{p.data}"}}
        for p in parts
    ]


def _tools(conversation: Conversation, dialect: Dialect) -> Body:
    tools = conversation.tools
    if not tools:
        return {}
    choice = conversation.tool_choice
    if choice == "none" and dialect.tool_choice is None:
        return {}  # no tool_choice to say it: the tools are not offered at all
    offered: tuple[ToolSpec, ...] = tools
    wire_choice: Any = {"auto": "auto", "any": "required", "none": "none"}.get(choice)
    if choice == "tool":
        if dialect.tool_choice == "string":
            offered = tuple(t for t in tools if t.name == conversation.tool_name)
            wire_choice = "required"
        else:
            wire_choice = {"type": "function", "function": {"name": conversation.tool_name}}
    body: Body = {"tools": [_tool(t, dialect) for t in offered]}
    if dialect.tool_choice is not None:
        body["tool_choice"] = wire_choice
    if choice != "none":
        body["parallel_tool_calls"] = not conversation.disable_parallel_tool_use
    return body


def _tool(tool: ToolSpec, dialect: Dialect) -> Body:
    function: Body = {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.input_schema,
    }
    if dialect.strict_tools:
        function["strict"] = True
    return {"type": "function", "function": function}

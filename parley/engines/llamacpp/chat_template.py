"""Rendering a conversation with the model's own chat template (sandboxed Jinja).

The template comes from the GGUF metadata (``tokenizer.chat_template``), the
way Hugging Face's ``apply_chat_template`` runs it: trim/lstrip blocks, a
``raise_exception`` helper, ``tojson`` that keeps non-ASCII text.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from parley.conversation import (
    Conversation,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    Turn,
)
from parley.engines.llamacpp.output import (
    FALLBACK,
    HERMES,
    THINK_CLOSE,
    THINK_OPEN,
    CallSyntax,
    system_section,
)
from parley.errors import InvalidRequestError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TemplateRefusal(Exception):
    """The template refused this message layout (``raise_exception`` was called)."""


def _raise(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        self.source = source or FALLBACK_TEMPLATE
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Hermes-style templates render tools themselves and show the model
        # <tool_call> blocks; every other template gets parley's fallback.
        self.native_tools = "<tool_call>" in self.source and "tools" in self.source
        self.syntax: CallSyntax = HERMES if self.native_tools else FALLBACK
        # Templates with a reasoning mode (Qwen3-style ``enable_thinking``) are told
        # whether to think and get earlier reasoning as ``reasoning_content``.
        self.reasoning = "enable_thinking" in self.source

    def render(self, conversation: Conversation) -> str:
        """The prompt text: history, generation prompt, then the prefill (or, when
        thinking, the opening of a reasoning section)."""
        native, reasoning = self.native_tools, self.reasoning
        tools = _function_specs(conversation) if native and conversation.tools else None
        thinking = conversation.thinking_budget is not None
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        if reasoning:
            extra["enable_thinking"] = thinking
        messages = _messages(conversation, inline_system=True, native=native, reasoning=reasoning)
        try:
            text = self._apply(messages, extra)
        except TemplateRefusal:
            # Templates that allow a system message only in first place get the
            # inline ones folded into the user turn that follows them.
            folded = _messages(
                conversation, inline_system=False, native=native, reasoning=reasoning
            )
            text = self._apply(folded, extra)
        if thinking:
            # The reasoning section is open when generation starts (some templates open it).
            return text if text.endswith(THINK_OPEN) else text + THINK_OPEN
        return text + conversation.prefill

    def _apply(self, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except TemplateRefusal:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"messages: the model's chat template failed: {exc}") from exc


def _function_specs(conversation: Conversation) -> list[dict[str, Any]]:
    """Tools in the shape chat templates expect (OpenAI-style functions)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema,
            },
        }
        for t in conversation.tools
    ]


def _messages(
    conversation: Conversation,
    *,
    inline_system: bool,
    native: bool = False,
    reasoning: bool = False,
) -> list[dict[str, Any]]:
    turns = _without_stale_thinking(conversation.turns)
    out: list[dict[str, Any]] = []
    system = conversation.system or ""
    if conversation.tools and not native:
        system = f"{system}\n\n{system_section(conversation)}".strip()
    elif conversation.tools and conversation.tool_choice == "none":
        system = f"{system}\n\nDo not call any tool in this reply.".strip()
    if conversation.answer_instruction is not None:
        system = f"{system}\n\n{conversation.answer_instruction}".strip()
    if system:
        out.append({"role": "system", "content": system})
    pending_system: list[str] = []
    for turn in turns:
        if turn.role == "system":
            if inline_system:
                out.append({"role": "system", "content": turn.text})
            else:
                pending_system.append(turn.text)
            continue
        thought = "\n\n".join(p.text for p in turn.parts if isinstance(p, ThinkingPart))
        if reasoning and thought:  # the template renders it
            turn = Turn(turn.role, tuple(p for p in turn.parts if not isinstance(p, ThinkingPart)))
        if native:
            produced = _native_turn(turn)
        else:
            produced = [{"role": turn.role, "content": _turn_text(turn)}]
        if reasoning and thought:
            produced[-1]["reasoning_content"] = thought
        if pending_system and produced and produced[-1]["role"] == "user":
            notes = [f"<system>{s}</system>" for s in pending_system]
            produced[-1]["content"] = "\n\n".join([*notes, produced[-1]["content"]])
            pending_system = []
        for message in produced:
            if out and _mergeable(out[-1], message):
                # Folding system turns away can leave two user turns side by side.
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + message["content"]}
            else:
                out.append(message)
    return out


def _without_stale_thinking(turns: tuple[Turn, ...]) -> tuple[Turn, ...]:
    """Drop thinking from every assistant turn but the one the current tool loop
    continues (the last assistant turn, when only tool results follow it), as
    Anthropic documents for thinking in history."""
    loop = len(turns) >= 2 and turns[-2].role == "assistant" and turns[-1].role == "user"
    keep = -1
    if loop and all(isinstance(p, ToolResultPart) for p in turns[-1].parts):
        keep = len(turns) - 2
    out = []
    for i, turn in enumerate(turns):
        if i != keep and any(isinstance(p, ThinkingPart) for p in turn.parts):
            turn = Turn(turn.role, tuple(p for p in turn.parts if not isinstance(p, ThinkingPart)))
        out.append(turn)
    return tuple(out)


def _mergeable(before: dict[str, Any], after: dict[str, Any]) -> bool:
    plain = "tool_calls" not in before and "tool_calls" not in after
    return plain and before["role"] == after["role"] and after["role"] in ("user", "assistant")


def _native_turn(turn: Turn) -> list[dict[str, Any]]:
    """A turn as OpenAI-style messages: assistant ``tool_calls``, ``tool`` results."""
    thought = "".join(
        f"{THINK_OPEN}{p.text}{THINK_CLOSE}\n\n" for p in turn.parts if isinstance(p, ThinkingPart)
    )
    text = thought + "\n\n".join(p.text for p in turn.parts if isinstance(p, TextPart))
    if turn.role == "assistant":
        calls = [
            {"type": "function", "id": p.id, "function": {"name": p.name, "arguments": p.input}}
            for p in turn.parts
            if isinstance(p, ToolCallPart)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return [message]
    results = [
        {
            "role": "tool",
            "tool_call_id": p.tool_use_id,
            "content": f"Error: {p.text}" if p.is_error else p.text,
        }
        for p in turn.parts
        if isinstance(p, ToolResultPart)
    ]
    return [*results, {"role": turn.role, "content": text}] if text else results


def _turn_text(turn: Turn) -> str:
    pieces: list[str] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, ThinkingPart):
            pieces.append(f"{THINK_OPEN}{part.text}{THINK_CLOSE}")
        elif isinstance(part, ToolCallPart):
            body = json.dumps(part.input, ensure_ascii=False)
            call = f"{FALLBACK.open}{part.name}{FALLBACK.name_end}{body}{FALLBACK.close}"
            pieces.append(call + part.mark)
        elif isinstance(part, ToolResultPart):
            status = ' is_error="true"' if part.is_error else ""
            head = f'<tool_result tool_use_id="{part.tool_use_id}"{status}>'
            pieces.append(f"{head}\n{part.text}\n</tool_result>")
    return "\n\n".join(pieces)

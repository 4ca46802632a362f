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

from parley.conversation import Conversation, TextPart, ToolCallPart, ToolResultPart, Turn
from parley.engines.tool_format import CLOSE, NAME_END, OPEN, system_section
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

    def render(self, conversation: Conversation) -> str:
        """The prompt text: history, generation prompt, then the prefill."""
        messages = _messages(conversation, inline_system=True)
        try:
            text = self._apply(messages)
        except TemplateRefusal:
            # Templates that allow a system message only in first place get the
            # inline ones folded into the user turn that follows them.
            text = self._apply(_messages(conversation, inline_system=False))
        return text + conversation.prefill

    def _apply(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateRefusal:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"messages: the model's chat template failed: {exc}") from exc


def _messages(conversation: Conversation, *, inline_system: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = conversation.system or ""
    if conversation.tools:
        system = f"{system}\n\n{system_section(conversation)}".strip()
    if system:
        out.append({"role": "system", "content": system})
    pending_system: list[str] = []
    for turn in conversation.turns:
        if turn.role == "system":
            if inline_system:
                out.append({"role": "system", "content": turn.text})
            else:
                pending_system.append(turn.text)
            continue
        content = _turn_text(turn)
        if pending_system and turn.role == "user":
            content = "\n\n".join([*(f"<system>{s}</system>" for s in pending_system), content])
            pending_system = []
        if out and out[-1]["role"] == turn.role:
            # Folding system turns away can leave two user turns side by side.
            out[-1] = {"role": turn.role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": turn.role, "content": content})
    return out


def _turn_text(turn: Turn) -> str:
    pieces: list[str] = []
    for part in turn.parts:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, ToolCallPart):
            body = json.dumps(part.input, ensure_ascii=False)
            pieces.append(f"{OPEN}{part.name}{NAME_END}{body}{CLOSE}")
        elif isinstance(part, ToolResultPart):
            status = ' is_error="true"' if part.is_error else ""
            head = f'<tool_result tool_use_id="{part.tool_use_id}"{status}>'
            pieces.append(f"{head}\n{part.text}\n</tool_result>")
    return "\n\n".join(pieces)

"""The engine's view of a request: frozen value types, no wire model.

Engines read these (``Conversation`` and its turns, parts, tools, cache
marks); ``build.py`` makes them from a validated request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ToolChoice = Literal["auto", "any", "tool", "none"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ToolCallPart:
    id: str
    name: str
    input: dict[str, Any]
    mark: str = ""  # a cache breakpoint tag, when the block had cache_control


@dataclass(frozen=True)
class ToolResultPart:
    tool_use_id: str
    text: str
    is_error: bool = False


@dataclass(frozen=True)
class ThinkingPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """A base64 image of a user turn (only for a model whose capabilities take images)."""

    media_type: str
    data: str


Part = TextPart | ToolCallPart | ToolResultPart | ThinkingPart | ImagePart


@dataclass(frozen=True)
class Turn:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    strict: bool = False  # the input must validate: what the grammar cannot guarantee is refused


@dataclass(frozen=True)
class Capabilities:
    """What the served model can take; everything else is refused up front."""

    images: bool = False
    tools: bool = False
    prompt_cache: bool = False  # the engine keeps KV state at cache_control breakpoints
    thinking: bool = True  # extended thinking with a budget (an upstream may lack one)
    structured_outputs: bool = False  # output_config.format and strict tools are guaranteed


@dataclass(frozen=True)
class CacheMark:
    """A ``cache_control`` breakpoint: ``tag`` is written into the text right after
    the marked block, and the engine turns its place in the rendered prompt into
    a token position (then removes it)."""

    tag: str
    ttl: Literal["5m", "1h"]


@dataclass(frozen=True)
class Conversation:
    """A request as the engine sees it: what to render and what to continue."""

    system: str | None
    turns: tuple[Turn, ...]
    prefill: str = ""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    tool_name: str | None = None
    disable_parallel_tool_use: bool = False
    thinking_budget: int | None = None  # open a reasoning section of at most this many tokens
    marks: tuple[CacheMark, ...] = ()  # cache breakpoints, in no particular order
    # ``output_config.format``: the answer text is one JSON value of this schema.
    answer_schema: dict[str, Any] | None = None

    @property
    def answer_instruction(self) -> str | None:
        """What the system prompt adds when the answer has a JSON format (every
        engine says it the same way, so the model knows what it is held to)."""
        if self.answer_schema is None:
            return None
        schema = json.dumps(self.answer_schema, ensure_ascii=False)
        return (
            f"Reply with only a JSON value (no other text) that matches this JSON Schema:\n{schema}"
        )

    @property
    def last_user_text(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn.text
        return ""

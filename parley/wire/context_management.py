"""``context_management`` (beta ``context-management-2025-06-27``): the edits a
request asks the server to make to its conversation before the model sees it.

Shapes as the SDK's ``BetaContextManagementConfigParam``: a list of edits
discriminated on ``type``; an unknown type is an error at ``edits.N.type``.
What the clearing edits do is ``parley.conversation.context_edits``; what
``compact_20260112`` and the top-level ``compaction`` parameter (``Summarize``)
do is ``parley.compaction``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from parley.wire.common import (
    RequestModel,
    shape_discriminator,
    tag,
    type_discriminator,
)

# The SDK states no bounds; a count below zero means nothing, so it is refused.
Count = Annotated[int, Field(ge=0)]

CLEAR_TOOL_USES: Final = "clear_tool_uses_20250919"
CLEAR_THINKING: Final = "clear_thinking_20251015"
COMPACT: Final = "compact_20260112"
EDIT_TYPES = (CLEAR_TOOL_USES, CLEAR_THINKING, COMPACT)


class InputTokensTrigger(RequestModel):
    type: Literal["input_tokens"]
    value: Count


class ToolUsesTrigger(RequestModel):
    type: Literal["tool_uses"]
    value: Count


Trigger = Annotated[
    Annotated[InputTokensTrigger, Tag(tag("input_tokens"))]
    | Annotated[ToolUsesTrigger, Tag(tag("tool_uses"))],
    type_discriminator("trigger", ["input_tokens", "tool_uses"]),
]


class ToolUsesKeep(RequestModel):
    type: Literal["tool_uses"]
    value: Count


class InputTokensClearAtLeast(RequestModel):
    type: Literal["input_tokens"]
    value: Count


def _bool_or_list(value: Any) -> str:
    return tag("bool") if isinstance(value, bool) else tag("list")


ToolNames = Annotated[
    Annotated[bool, Tag(tag("bool"))] | Annotated[list[str], Tag(tag("list"))],
    shape_discriminator(_bool_or_list),
]


class ClearToolUses(RequestModel):
    """Replace the oldest tool results (and optionally their calls' inputs) with a
    placeholder once the trigger is reached. Defaults as documented by the API."""

    type: Literal["clear_tool_uses_20250919"]
    trigger: Trigger | None = None  # default: 100,000 input tokens
    keep: ToolUsesKeep | None = None  # default: the 3 most recent tool uses
    clear_at_least: InputTokensClearAtLeast | None = None
    clear_tool_inputs: ToolNames | None = None  # True: every cleared call; a list: those tools
    exclude_tools: list[str] | None = None


class ThinkingTurns(RequestModel):
    type: Literal["thinking_turns"]
    value: Count


class AllThinkingTurns(RequestModel):
    type: Literal["all"]


ThinkingKeepObject = Annotated[
    Annotated[ThinkingTurns, Tag(tag("thinking_turns"))]
    | Annotated[AllThinkingTurns, Tag(tag("all"))],
    type_discriminator("keep", ["thinking_turns", "all"]),
]


def _str_or_object(value: Any) -> str:
    return tag("str") if isinstance(value, str) else tag("object")


ThinkingKeep = Annotated[
    Annotated[Literal["all"], Tag(tag("str"))] | Annotated[ThinkingKeepObject, Tag(tag("object"))],
    shape_discriminator(_str_or_object),
]


class ClearThinking(RequestModel):
    """Drop the thinking of all but the ``keep`` most recent assistant turns."""

    type: Literal["clear_thinking_20251015"]
    keep: ThinkingKeep | None = None  # default: the last turn's thinking

    @property
    def keeps_all(self) -> bool:
        return self.keep == "all" or isinstance(self.keep, AllThinkingTurns)


class Compact(RequestModel):
    """Summarise the conversation once the prompt exceeds ``trigger`` input tokens
    (default 150,000; parley takes any value, since local contexts are small)."""

    type: Literal["compact_20260112"]
    trigger: InputTokensTrigger | None = None
    instructions: str | None = None  # added to parley's summarising prompt
    pause_after_compaction: bool | None = (
        None  # stop after the summary: ``stop_reason: compaction``
    )


class Summarize(RequestModel):
    """The top-level ``compaction`` parameter (the SDK's ``BetaCompactionConfigParam``):
    the request only compacts; ``instructions`` replace parley's summarising prompt."""

    type: Literal["summarize"]
    instructions: str | None = None


class UnknownEdit(RequestModel):
    """Where an edit of no known type goes: its ``type`` fails, naming that path."""

    model_config = RequestModel.model_config | {"extra": "allow"}
    type: Literal["clear_tool_uses_20250919", "clear_thinking_20251015", "compact_20260112"]


def _edit_kind(value: Any) -> str:
    raw = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return tag(raw) if raw in EDIT_TYPES else tag("unknown")


Edit = Annotated[
    Annotated[ClearToolUses, Tag(tag(CLEAR_TOOL_USES))]
    | Annotated[ClearThinking, Tag(tag(CLEAR_THINKING))]
    | Annotated[Compact, Tag(tag(COMPACT))]
    | Annotated[UnknownEdit, Tag(tag("unknown"))],
    shape_discriminator(_edit_kind),
]


class ContextManagement(RequestModel):
    edits: list[Edit] | None = None

    @model_validator(mode="after")
    def _thinking_first(self) -> ContextManagement:
        # The API's documented rule when both strategies are given.
        kinds = [edit.type for edit in self.edits or ()]
        if CLEAR_THINKING in kinds and CLEAR_TOOL_USES in kinds[: kinds.index(CLEAR_THINKING)]:
            raise PydanticCustomError(
                "edit_order",
                "`clear_thinking_20251015` must come first in `edits` when it is combined "
                "with other strategies",
            )
        return self

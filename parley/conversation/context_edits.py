"""Context editing (beta ``context_management``): the conversation as the model
sees it after the request's edits, and what each edit cleared.

The client keeps its full history; parley edits its own ``Conversation``
before the engine renders it, in the order the edits are given:

- ``clear_tool_uses_20250919``: once the trigger is exceeded (input tokens of
  the prompt so far, or the number of tool uses), the results of every tool use
  but the ``keep`` most recent become ``CLEARED_RESULT``, and the calls' inputs
  ``{}`` where ``clear_tool_inputs`` says so; uses of ``exclude_tools`` stay.
- ``clear_thinking_20251015``: the thinking of all but the ``keep`` most recent
  assistant turns that thought is dropped (a turn runs from one user message
  that is not only tool results to the next, as the API counts turns).

Counts are the engine's own (``prepare``: the exact prompt), so an edit's
``cleared_input_tokens`` is the prompt before it minus the prompt after it. An
edit that would not shrink the prompt, or that clears fewer tokens than its
``clear_at_least``, is not applied and not reported. A cache breakpoint on a
cleared tool result stays, after the placeholder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Literal, Protocol, TypeVar

from parley.conversation.types import (
    Conversation,
    Part,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    Turn,
)
from parley.errors import InvalidRequestError
from parley.wire import context_management as wcm
from parley.wire import requests as wr

# The API documents a placeholder but not its words; these are parley's.
CLEARED_RESULT = "[tool result cleared to save context]"
DEFAULT_TRIGGER_TOKENS = 100_000
DEFAULT_KEEP_TOOL_USES = 3
DEFAULT_KEEP_THINKING_TURNS = 1


class Counted(Protocol):
    @property
    def n_tokens(self) -> int: ...


P = TypeVar("P", bound=Counted)


@dataclass(frozen=True)
class AppliedEdit:
    kind: Literal["clear_tool_uses_20250919", "clear_thinking_20251015"]
    cleared: int  # tool uses, or thinking turns
    cleared_input_tokens: int


@dataclass(frozen=True)
class Edited(Generic[P]):
    prompt: P  # the edited prompt, as the engine prepared it
    original: int  # tokens of the prompt before any edit
    applied: tuple[AppliedEdit, ...]


def check_context_management(req: wr.CountTokensRequest) -> None:
    """The API's rules on ``context_management`` that need the rest of the request."""
    if req.context_management is None:
        return
    if req.compaction is not None:
        raise InvalidRequestError("compaction: cannot be combined with `context_management`")
    thinking = req.thinking is not None and req.thinking.type != "disabled"
    for edit in req.context_management.edits or ():
        if isinstance(edit, wcm.ClearThinking) and not thinking:
            raise InvalidRequestError(
                "`clear_thinking_20251015` strategy requires `thinking` to be enabled"
            )


Edit = wcm.ClearToolUses | wcm.ClearThinking


def edits_of(req: wr.CountTokensRequest) -> tuple[Edit, ...]:
    """The edits that may change the prompt (Claude Code's ``keep: "all"`` cannot),
    so a request without any is prepared as if it had no ``context_management``."""
    if req.context_management is None:
        return ()
    edits = req.context_management.edits or ()
    clearing = (e for e in edits if isinstance(e, wcm.ClearToolUses | wcm.ClearThinking))
    return tuple(e for e in clearing if not (isinstance(e, wcm.ClearThinking) and e.keeps_all))


def apply_edits(
    conversation: Conversation,
    edits: tuple[Edit, ...],
    prepare: Callable[[Conversation], P],
) -> Edited[P]:
    """Apply ``edits`` in order; ``prepare`` renders and counts a conversation exactly."""
    prompt = prepare(conversation)
    original = prompt.n_tokens
    applied: list[AppliedEdit] = []
    for edit in edits:
        if isinstance(edit, wcm.ClearToolUses):
            if not _triggered(edit, conversation, prompt.n_tokens):
                continue
            edited, cleared = clear_tool_uses(conversation, edit)
            kind: Literal["clear_tool_uses_20250919", "clear_thinking_20251015"]
            kind = wcm.CLEAR_TOOL_USES
            at_least = edit.clear_at_least.value if edit.clear_at_least is not None else 0
        else:
            edited, cleared = clear_thinking(conversation, edit)
            kind = wcm.CLEAR_THINKING
            at_least = 0
        if not cleared:
            continue
        after = prepare(edited)
        tokens = prompt.n_tokens - after.n_tokens
        if tokens <= 0 or tokens < at_least:  # not worth a change (and a cache rewrite)
            continue
        conversation, prompt = edited, after
        applied.append(AppliedEdit(kind, cleared, tokens))
    return Edited(prompt, original, tuple(applied))


def _triggered(edit: wcm.ClearToolUses, conversation: Conversation, tokens: int) -> bool:
    trigger = edit.trigger
    if isinstance(trigger, wcm.ToolUsesTrigger):
        return len(_calls(conversation)) > trigger.value
    threshold = trigger.value if trigger is not None else DEFAULT_TRIGGER_TOKENS
    return tokens > threshold


def _calls(conversation: Conversation) -> list[ToolCallPart]:
    return [
        p
        for t in conversation.turns
        if t.role == "assistant"
        for p in t.parts
        if isinstance(p, ToolCallPart)
    ]


def clear_tool_uses(
    conversation: Conversation, edit: wcm.ClearToolUses
) -> tuple[Conversation, int]:
    """The conversation with the older tool uses cleared, and how many were."""
    calls = _calls(conversation)
    keep = edit.keep.value if edit.keep is not None else DEFAULT_KEEP_TOOL_USES
    older = calls[: max(len(calls) - keep, 0)]
    excluded = set(edit.exclude_tools or ())
    chosen = {c.id: c for c in older if c.name not in excluded}
    inputs = edit.clear_tool_inputs
    named = set(inputs) if isinstance(inputs, list) else set()
    clear_input = {i for i, c in chosen.items() if inputs is True or c.name in named}
    marks = [m.tag for m in conversation.marks]
    changed: set[str] = set()

    def edited(part: Part) -> Part:
        if isinstance(part, ToolResultPart) and part.tool_use_id in chosen:
            kept = "".join(tag for tag in marks if tag in part.text)  # its breakpoint stays
            if part.text != CLEARED_RESULT + kept:
                changed.add(part.tool_use_id)
                return replace(part, text=CLEARED_RESULT + kept)
        if isinstance(part, ToolCallPart) and part.id in clear_input and part.input:
            changed.add(part.id)
            return replace(part, input={})
        return part

    turns = tuple(Turn(t.role, tuple(edited(p) for p in t.parts)) for t in conversation.turns)
    return replace(conversation, turns=turns), len(changed)


def clear_thinking(conversation: Conversation, edit: wcm.ClearThinking) -> tuple[Conversation, int]:
    """The conversation without the thinking of older turns, and how many turns lost it."""
    if edit.keeps_all:
        return conversation, 0
    keep = edit.keep.value if isinstance(edit.keep, wcm.ThinkingTurns) else None
    keep = DEFAULT_KEEP_THINKING_TURNS if keep is None else keep
    turn_of = _assistant_turns(conversation.turns)
    thought = sorted({turn_of[i] for i, t in enumerate(conversation.turns) if _thinks(t)})
    cleared = set(thought[: max(len(thought) - keep, 0)])
    if not cleared:
        return conversation, 0
    turns = tuple(
        Turn(t.role, tuple(p for p in t.parts if not isinstance(p, ThinkingPart)))
        if turn_of.get(i) in cleared
        else t
        for i, t in enumerate(conversation.turns)
    )
    return replace(conversation, turns=turns), len(cleared)


def _thinks(turn: Turn) -> bool:
    return turn.role == "assistant" and any(isinstance(p, ThinkingPart) for p in turn.parts)


def _assistant_turns(turns: tuple[Turn, ...]) -> dict[int, int]:
    """Each assistant message's turn number: a user message with more than tool
    results begins a new turn; a tool loop's messages share theirs."""
    number, out = 0, {}
    for i, turn in enumerate(turns):
        if turn.role == "user" and not all(isinstance(p, ToolResultPart) for p in turn.parts):
            number += 1
        elif turn.role == "assistant":
            out[i] = number
    return out

"""Compaction (beta) on the conversation's side: the summarising conversation, the
compacted one the answer is generated on, and the compaction block a later
request sends back.

A compaction block sent back in an assistant message stands for everything
before it: the conversation renders from the summary (a user turn, so the
model reads it as context rather than as its own words) and goes on with
whatever follows the block. The conversation an answer is generated on right
after compacting is the same one, so a request that sends the block back
renders, and counts, the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from parley.conversation.types import CacheMark, Conversation, TextPart, Turn
from parley.errors import CompactionError, InvalidRequestError, UnsupportedFeatureError
from parley.thinking import Signer
from parley.wire import content as wc
from parley.wire import requests as wr
from parley.wire.common import CacheControlEphemeral

SUMMARY_HEADER = "Summary of the conversation so far:\n\n"

# parley's summarising prompt; ``compact_20260112``'s ``instructions`` are added
# to it, the top-level ``compaction.instructions`` replace it.
DEFAULT_PROMPT = (
    "Stop the conversation here and write a summary of it instead of a reply. The summary "
    "replaces everything above, so keep what is needed to go on: the user's requests "
    "(the latest one in full), decisions made, facts and names given, tool results that "
    "still matter, and what remains to be done. Write only the summary."
)


@dataclass(frozen=True)
class Start:
    """Where the conversation begins: the last compaction block with content."""

    message: int
    block: int
    content: str
    cache_control: CacheControlEphemeral | None


def compaction_start(messages: list[wr.Message], signer: Signer | None) -> Start | None:
    """Check every compaction block of ``messages`` and return the last with content.

    A block with ``content: null`` (a compaction that failed) is a no-op. One
    with content must carry the signature parley gave it; each block's faults
    are named by its path. Of several blocks with content the last wins, as the
    public documentation describes (everything before a block is dropped), so a
    client that keeps its whole history works across several compactions.
    """
    start: Start | None = None
    for i, message in enumerate(messages):
        if message.content is None or isinstance(message.content, str):
            continue
        for j, block in enumerate(message.content):
            if not isinstance(block, wc.CompactionBlock):
                continue
            path = f"messages.{i}.content.{j}"
            if message.role != "assistant":
                raise CompactionError(
                    f"{path}: a `compaction` block belongs to an `assistant` message",
                    code="compaction_block_misplaced",
                )
            if block.encrypted_content is not None:
                raise UnsupportedFeatureError(
                    f"{path}.encrypted_content: not supported by parley (it gives out no "
                    "`encrypted_content`); send the block back as it was returned"
                )
            if block.tool_changes:
                raise UnsupportedFeatureError(
                    f"{path}.tool_changes: not supported by parley (it gives out no "
                    "`tool_changes`); send the block back as it was returned"
                )
            if block.content is None:
                continue
            if not block.content:
                raise InvalidRequestError(
                    f"{path}.content: empty string content is not allowed (send null for a "
                    "compaction that failed)"
                )
            signature = block.signature or ""
            if signer is None or not signer.verify_compaction(block.content, signature):
                raise CompactionError(
                    f"{path}.signature: Invalid `signature` in `compaction` block",
                    code="compaction_signature_invalid",
                )
            start = Start(i, j, block.content, block.cache_control)
    return start


def only_void_compactions(message: wr.Message) -> bool:
    """A message of nothing but compaction blocks without content: it renders as nothing."""
    content: Any = message.content
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(b, wc.CompactionBlock) and b.content is None for b in content)
    )


def summary_turn(summary: str) -> Turn:
    return Turn("user", (TextPart(SUMMARY_HEADER + summary),))


def summarising(conversation: Conversation, prompt: str) -> Conversation:
    """The conversation with ``prompt`` asked last: what the model summarises.

    Everything before the request stays as rendered (its cache breakpoints
    too, so the summary reads the conversation's cached prefix); tools stay
    offered but none may be called, and nothing is thought.
    """
    turns = list(conversation.turns)
    if turns and turns[-1].role == "user":
        turns[-1] = Turn("user", (*turns[-1].parts, TextPart(prompt)))
    else:
        turns.append(Turn("user", (TextPart(prompt),)))
    return replace(
        conversation,
        turns=tuple(turns),
        prefill="",
        tool_choice="none",
        tool_name=None,
        thinking_budget=None,
        answer_schema=None,
    )


def compacted(conversation: Conversation, summary: str) -> Conversation:
    """The conversation from ``summary`` on, as a request sending the block back
    renders it: the system prompt and tools kept, the turns replaced."""
    kept = (conversation.system or "") + "".join(t.description for t in conversation.tools)
    marks: tuple[CacheMark, ...] = tuple(m for m in conversation.marks if m.tag in kept)
    return replace(conversation, turns=(summary_turn(summary),), prefill="", marks=marks)

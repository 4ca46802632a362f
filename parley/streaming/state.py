"""The state machine that turns engine events into Anthropic stream events.

It owns the invariants clients depend on (protocol notes, "Streaming"):
``message_start`` first; blocks indexed contiguously from 0; one block open at
a time, started before its deltas and stopped before the next starts;
``message_delta`` with stop reason and cumulative usage; ``message_stop`` last.
The same machine builds the non-streamed ``Message``, so both paths agree.
It knows nothing of HTTP and is tested on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from parley.engines.base import (
    CacheUsage,
    Compacted,
    EngineEvent,
    Finished,
    TextChunk,
    ThinkingChunk,
    ToolCallStart,
    ToolInputChunk,
)
from parley.errors import EngineError, ParleyError
from parley.wire import events as ev
from parley.wire import responses as wr


class Phase(Enum):
    NEW = "new"
    STREAMING = "streaming"
    DONE = "done"


class StreamProtocolError(EngineError):
    """An engine produced events in an order the protocol cannot express."""


@dataclass
class _OpenBlock:
    index: int
    kind: str
    text: list[str] = field(default_factory=list)
    tool_id: str = ""
    tool_name: str = ""


@dataclass
class MessageState:
    message_id: str
    model: str
    input_tokens: int  # prompt tokens neither read from nor written to the cache
    cache: CacheUsage = field(default_factory=CacheUsage)
    sign: Callable[[str], str] | None = None  # signs a finished thinking block
    seal: Callable[[str], str] | None = None  # when set, thinking goes out redacted
    context_management: wr.ContextManagement | None = None  # the request's applied edits
    phase: Phase = Phase.NEW
    content: list[wr.ContentBlock] = field(default_factory=list)
    stop_reason: wr.StopReason | None = None
    stop_sequence: str | None = None
    output_tokens: int = 0
    compaction: wr.CompactionIteration | None = None  # the summarising generation's usage
    # When the engine's first event came (``time.perf_counter``): the access log's
    # time to first token.
    first_output_at: float | None = None
    failure: wr.ErrorDetail | None = None  # the error event that ended the stream, if one did
    _open: _OpenBlock | None = None

    @property
    def generated_tokens(self) -> int:
        """Every token generated for the message: the answer's, and a summary's."""
        return self.output_tokens + (self.compaction.output_tokens if self.compaction else 0)

    def start(self) -> list[ev.StreamEvent]:
        if self.phase is not Phase.NEW:
            raise StreamProtocolError("message already started")
        self.phase = Phase.STREAMING
        shell = wr.Message(id=self.message_id, model=self.model, content=[], usage=self._usage())
        return [ev.MessageStart(message=shell)]

    def feed(self, event: EngineEvent) -> list[ev.StreamEvent]:
        if self.phase is not Phase.STREAMING:
            raise StreamProtocolError(f"engine event {type(event).__name__} outside a message")
        if self.first_output_at is None:
            self.first_output_at = time.perf_counter()
        match event:
            case TextChunk(text=text):
                return self._stream_into("text", text, ev.TextDelta.model_construct(text=text))
            case ThinkingChunk(text=text) if self.seal is not None:
                # Redacted thinking is sent whole, sealed, when the block ends.
                if self._open is None or self._open.kind != "redacted":
                    out = self._close()
                    self._open = _OpenBlock(len(self.content), "redacted")
                else:
                    out = []
                self._open.text.append(text)
                return out
            case ThinkingChunk(text=text):
                delta = ev.ThinkingDelta.model_construct(thinking=text)
                return self._stream_into("thinking", text, delta)
            case ToolCallStart(id=tool_id, name=name):
                out = self._close()
                self._open = _OpenBlock(
                    len(self.content), "tool_use", tool_id=tool_id, tool_name=name
                )
                block = wr.ToolUseBlock(id=tool_id, name=name, input={})
                out.append(ev.ContentBlockStart(index=self._open.index, content_block=block))
                return out
            case ToolInputChunk(partial_json=piece):
                if self._open is None or self._open.kind != "tool_use":
                    raise StreamProtocolError("tool input outside a tool_use block")
                self._open.text.append(piece)
                delta_json = ev.InputJSONDelta.model_construct(partial_json=piece)
                return [
                    ev.ContentBlockDelta.model_construct(index=self._open.index, delta=delta_json)
                ]
            case Compacted():
                return self._compacted(event)
            case Finished():
                return self._finish(event)
        raise StreamProtocolError(f"unknown engine event {event!r}")

    def fail(self, error: ParleyError, request_id: str | None) -> list[ev.StreamEvent]:
        """The error event that ends a stream which already began."""
        self.phase = Phase.DONE
        detail = wr.error_detail(error.error_type, error.message, error.error_code)
        self.failure = detail
        return [ev.Error(error=detail, request_id=request_id)]

    def message(self) -> wr.Message:
        """The complete message, once ``Finished`` was fed."""
        if self.phase is not Phase.DONE or self.stop_reason is None:
            raise StreamProtocolError("message is not complete")
        return wr.Message(
            id=self.message_id,
            model=self.model,
            content=list(self.content),
            stop_reason=self.stop_reason,
            stop_sequence=self.stop_sequence,
            usage=self._usage(),
            context_management=self.context_management,
        )

    # --- internals ------------------------------------------------------------

    def _usage(self) -> wr.Usage:
        cache = self.cache
        return wr.Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_creation_input_tokens=cache.created,
            cache_read_input_tokens=cache.read,
            cache_creation=wr.CacheCreation(
                ephemeral_5m_input_tokens=cache.created_5m,
                ephemeral_1h_input_tokens=cache.created_1h,
            ),
            iterations=self._iterations(),
        )

    def _iterations(self) -> list[wr.Iteration] | None:
        """The compaction's usage, then the answer's (the top-level figures), if any."""
        if self.compaction is None:
            return None
        if self.stop_reason == "compaction":
            return [self.compaction]
        answer = wr.MessageIteration(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_creation_input_tokens=self.cache.created,
            cache_read_input_tokens=self.cache.read,
        )
        return [self.compaction, answer]

    def _compacted(self, done: Compacted) -> list[ev.StreamEvent]:
        """The compaction block, whole: its start carries the signature, one delta
        the summary (as the SDK's accumulator reads it)."""
        if self.content or self._open is not None or self.compaction is not None:
            raise StreamProtocolError("a compaction block comes first, once")
        cache = done.cache
        self.compaction = wr.CompactionIteration(
            input_tokens=done.input_tokens - cache.read - cache.created,
            output_tokens=done.output_tokens,
            cache_creation_input_tokens=cache.created,
            cache_read_input_tokens=cache.read,
        )
        if done.answer_tokens is not None:  # the answer's prompt is the message's
            self.cache = done.answer_cache
            self.input_tokens = done.answer_tokens - self.cache.read - self.cache.created
        self.content.append(wr.CompactionBlock(content=done.content, signature=done.signature))
        start = wr.CompactionBlock(content=None, signature=done.signature)
        delta = ev.CompactionDelta(content=done.content)
        return [
            ev.ContentBlockStart(index=0, content_block=start),
            ev.ContentBlockDelta(index=0, delta=delta),
            ev.ContentBlockStop(index=0),
        ]

    def _stream_into(self, kind: str, text: str, delta: ev.Delta) -> list[ev.StreamEvent]:
        """Append ``text`` to the open block of ``kind`` (opening one if needed).

        The per-token hot path: events are built without re-validating our own values.
        """
        if not text:
            return []
        out = self._ensure_open(kind)
        assert self._open is not None
        self._open.text.append(text)
        out.append(ev.ContentBlockDelta.model_construct(index=self._open.index, delta=delta))
        return out

    def _ensure_open(self, kind: str) -> list[ev.StreamEvent]:
        if self._open is not None and self._open.kind == kind:
            return []
        out = self._close()
        self._open = _OpenBlock(len(self.content), kind)
        empty: wr.ContentBlock = (
            wr.ThinkingBlock(thinking="", signature="")
            if kind == "thinking"
            else wr.TextBlock(text="")
        )
        out.append(ev.ContentBlockStart(index=self._open.index, content_block=empty))
        return out

    def _close(self, *, truncated: bool = False) -> list[ev.StreamEvent]:
        """Stop the open block; ``truncated`` when a limit cut the message short."""
        block = self._open
        if block is None:
            return []
        self._open = None
        if block.kind == "text":
            self.content.append(wr.TextBlock(text="".join(block.text)))
        elif block.kind == "redacted":
            assert self.seal is not None
            sealed = wr.RedactedThinkingBlock(data=self.seal("".join(block.text)))
            self.content.append(sealed)
            return [
                ev.ContentBlockStart(index=block.index, content_block=sealed),
                ev.ContentBlockStop(index=block.index),
            ]
        elif block.kind == "thinking":
            thinking = "".join(block.text)
            signature = self.sign(thinking) if self.sign is not None else ""
            self.content.append(wr.ThinkingBlock(thinking=thinking, signature=signature))
            # The signature goes out right before the block stops.
            delta = ev.SignatureDelta(signature=signature)
            return [
                ev.ContentBlockDelta(index=block.index, delta=delta),
                ev.ContentBlockStop(index=block.index),
            ]
        else:
            raw = "".join(block.text)
            try:
                parsed = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                if not truncated:
                    raise StreamProtocolError(f"tool input is not valid JSON: {exc}") from exc
                parsed = {}  # cut off mid-input by max_tokens: what arrived is incomplete
            if not isinstance(parsed, dict):
                raise StreamProtocolError("tool input is not a JSON object")
            self.content.append(
                wr.ToolUseBlock(id=block.tool_id, name=block.tool_name, input=parsed)
            )
        return [ev.ContentBlockStop(index=block.index)]

    def _finish(self, done: Finished) -> list[ev.StreamEvent]:
        out = self._close(
            truncated=done.stop_reason != "end_turn" and done.stop_reason != "tool_use"
        )
        self.phase = Phase.DONE
        self.stop_reason = done.stop_reason
        self.stop_sequence = done.stop_sequence
        self.output_tokens = done.output_tokens
        if done.cache is not None:  # the final figures; the prompt's total stays
            prompt = self.input_tokens + self.cache.read + self.cache.created
            self.cache = done.cache
            self.input_tokens = prompt - done.cache.read - done.cache.created
        usage = ev.MessageDeltaUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_creation_input_tokens=self.cache.created,
            cache_read_input_tokens=self.cache.read,
            iterations=self._iterations(),
        )
        body = ev.MessageDeltaBody(stop_reason=done.stop_reason, stop_sequence=done.stop_sequence)
        delta = ev.MessageDelta(delta=body, usage=usage, context_management=self.context_management)
        out.append(delta)
        out.append(ev.MessageStop())
        return out

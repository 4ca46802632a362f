"""Server-sent events of a streamed message, one class per event and delta type."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from parley.wire.common import ResponseModel
from parley.wire.responses import (
    ContentBlock,
    ContextManagement,
    ErrorDetail,
    Iteration,
    Message,
    StopReason,
)


class TextDelta(ResponseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(ResponseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(ResponseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(ResponseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class CompactionDelta(ResponseModel):
    """The whole summary, in one delta (the block's signature came with its start)."""

    type: Literal["compaction_delta"] = "compaction_delta"
    content: str | None


Delta = Annotated[
    TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta | CompactionDelta,
    Field(discriminator="type"),
]


class MessageStart(ResponseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStart(ResponseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class ContentBlockDelta(ResponseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Delta


class ContentBlockStop(ResponseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(ResponseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(ResponseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    iterations: list[Iteration] | None = Field(default=None, exclude_if=lambda v: v is None)


class MessageDelta(ResponseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageDeltaUsage
    context_management: ContextManagement | None = Field(
        default=None, exclude_if=lambda v: v is None
    )


class MessageStop(ResponseModel):
    type: Literal["message_stop"] = "message_stop"


class Ping(ResponseModel):
    type: Literal["ping"] = "ping"


class Error(ResponseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | Error
)

"""Response bodies: the Message object, token counts, models, errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from parley.wire.common import ResponseModel

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "compaction",  # the context was summarised and the answer not generated (beta)
    "refusal",
    "model_context_window_exceeded",
]


class CacheCreation(ResponseModel):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class CompactionIteration(ResponseModel):
    """The summarising generation's own usage (not counted in the top-level figures)."""

    type: Literal["compaction"] = "compaction"
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageIteration(ResponseModel):
    """The answer's usage: the same figures as the top level."""

    type: Literal["message"] = "message"
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


Iteration = Annotated[CompactionIteration | MessageIteration, Field(discriminator="type")]


class Usage(ResponseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation: CacheCreation = Field(default_factory=CacheCreation)
    service_tier: Literal["standard", "priority", "batch"] = "standard"
    # parley has one inference speed whatever the request's ``speed`` asked. The
    # region (``inference_geo``) is left out: the API's values name its regions.
    speed: Literal["standard", "fast"] = "standard"
    # Only when the request compacted its context (the beta Usage's field).
    iterations: list[Iteration] | None = Field(default=None, exclude_if=lambda v: v is None)


class TextBlock(ResponseModel):
    type: Literal["text"] = "text"
    text: str
    citations: list[dict[str, Any]] | None = Field(default=None, exclude_if=lambda v: v is None)


class ToolUseBlock(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(ResponseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class RedactedThinkingBlock(ResponseModel):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class CompactionBlock(ResponseModel):
    """The summary that stands for the conversation before it (beta compaction);
    ``content`` None when the summary came out empty. The signature is parley's
    HMAC over the content (``Signer.sign_compaction``)."""

    type: Literal["compaction"] = "compaction"
    content: str | None
    signature: str | None


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock | CompactionBlock,
    Field(discriminator="type"),
]


class ClearToolUsesApplied(ResponseModel):
    type: Literal["clear_tool_uses_20250919"] = "clear_tool_uses_20250919"
    cleared_tool_uses: int
    cleared_input_tokens: int


class ClearThinkingApplied(ResponseModel):
    type: Literal["clear_thinking_20251015"] = "clear_thinking_20251015"
    cleared_thinking_turns: int
    cleared_input_tokens: int


AppliedEdit = Annotated[ClearToolUsesApplied | ClearThinkingApplied, Field(discriminator="type")]


class ContextManagement(ResponseModel):
    """What a request's ``context_management`` edits did (the SDK's
    ``BetaContextManagementResponse``)."""

    applied_edits: list[AppliedEdit]


class CountTokensContextManagement(ResponseModel):
    original_input_tokens: int  # the prompt before any edit


class Message(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage
    # Only when the request had context_management (the beta Message's field).
    context_management: ContextManagement | None = Field(
        default=None, exclude_if=lambda v: v is None
    )


class TokenCount(ResponseModel):
    input_tokens: int
    context_management: CountTokensContextManagement | None = Field(
        default=None, exclude_if=lambda v: v is None
    )


class CapabilitySupport(ResponseModel):
    supported: bool


class CompactionCapability(ResponseModel):
    supported: bool
    summarize: CapabilitySupport


class ContextManagementCapability(ResponseModel):
    supported: bool
    clear_thinking_20251015: CapabilitySupport | None = None
    clear_tool_uses_20250919: CapabilitySupport | None = None
    compact_20260112: CapabilitySupport | None = None


class EffortCapability(ResponseModel):
    supported: bool
    low: CapabilitySupport
    medium: CapabilitySupport
    high: CapabilitySupport
    max: CapabilitySupport
    xhigh: CapabilitySupport | None = None


class ServerToolsCapability(ResponseModel):
    supported: bool
    code_execution: CapabilitySupport
    web_search: CapabilitySupport


class ThinkingTypes(ResponseModel):
    adaptive: CapabilitySupport
    between_tools: CapabilitySupport
    disabled: CapabilitySupport
    enabled: CapabilitySupport


class ThinkingCapability(ResponseModel):
    supported: bool
    types: ThinkingTypes


class ModelCapabilities(ResponseModel):
    """Every key the API always sends, each saying what parley honours for the model."""

    batch: CapabilitySupport
    citations: CapabilitySupport
    code_execution: CapabilitySupport
    compaction: CompactionCapability
    context_management: ContextManagementCapability
    effort: EffortCapability
    image_input: CapabilitySupport
    pdf_input: CapabilitySupport
    server_tools: ServerToolsCapability
    structured_outputs: CapabilitySupport
    thinking: ThinkingCapability


class ModelInfo(ResponseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str
    # A local model never retires under a client: it is served or it is not listed.
    lifecycle: Literal["active", "deprecated", "retired"] = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None
    line: str | None = None  # the API's model lines (opus, sonnet...) are Claude's, not ours
    max_input_tokens: int
    max_tokens: int
    capabilities: ModelCapabilities


class ModelPage(ResponseModel):
    data: list[ModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ErrorCode(ResponseModel):
    error_code: str


class ErrorDetail(ResponseModel):
    type: str
    message: str
    # Names the cause where the API has a code for it (the SDK picks its class by it).
    details: ErrorCode | None = Field(default=None, exclude_if=lambda v: v is None)


def error_detail(error_type: str, message: str, code: str | None = None) -> ErrorDetail:
    return ErrorDetail(
        type=error_type,
        message=message,
        details=ErrorCode(error_code=code) if code is not None else None,
    )


class ErrorEnvelope(ResponseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None

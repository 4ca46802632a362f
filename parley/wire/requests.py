"""Request bodies of ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Every create parameter of the SDK 2.x (GA and beta) is declared, so an unknown
field is an error naming its path. Parameters that parley accepts but cannot
honour yet are declared loosely and refused by the service layer
(``parley.conversation``) with a message saying what is missing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from parley.wire.common import (
    CacheControlEphemeral,
    KnownUnsupported,
    RequestModel,
    shape_discriminator,
    str_or_list,
    tag,
    type_discriminator,
)
from parley.wire.content import ContentBlock, TextBlock, UnsupportedBlock
from parley.wire.context_management import ContextManagement, Summarize
from parley.wire.server_tools import (
    CodeExecutionTool,
    MCPServer,
    MCPToolset,
    ToolSearchTool,
    WebFetchTool,
    WebSearchTool,
    server_tool_family,
)

MAX_MESSAGES = 100_000


MessageContent = Annotated[
    Annotated[str, Tag(tag("str"))] | Annotated[list[ContentBlock], Tag(tag("list"))],
    shape_discriminator(str_or_list),
]

SystemContent = Annotated[
    Annotated[str, Tag(tag("str"))] | Annotated[list[TextBlock], Tag(tag("list"))],
    shape_discriminator(str_or_list),
]


class UserMessage(RequestModel):
    role: Literal["user"]
    content: MessageContent


class AssistantMessage(RequestModel):
    role: Literal["assistant"]
    content: MessageContent


# Blocks a system message may carry besides text; they change the request's tool
# set mid-conversation, which parley cannot do yet.
SystemMessageBlock = Annotated[
    Annotated[TextBlock, Tag(tag("text"))] | Annotated[UnsupportedBlock, Tag(tag("unsupported"))],
    type_discriminator(
        "system message content block",
        ["text", "tool_addition", "tool_removal"],
        grouped={"tool_addition": "unsupported", "tool_removal": "unsupported"},
    ),
]


Effort = Literal["low", "medium", "high", "xhigh", "max"]


class SystemMessageOutputConfig(RequestModel):
    """A system message's per-turn output settings (beta ``per-turn-control-2026-07-01``,
    sent by Claude Code 2.1.3xx on every request): ``format`` stays top-level only."""

    effort: Effort | None = None


class SystemMessage(RequestModel):
    """A ``role: "system"`` turn inside ``messages`` (sent by newer Claude Code)."""

    role: Literal["system"]
    content: (
        Annotated[
            Annotated[str, Tag(tag("str"))] | Annotated[list[SystemMessageBlock], Tag(tag("list"))],
            shape_discriminator(str_or_list),
        ]
        | None
    ) = None
    # Honoured: its effort replaces the top-level one from this turn on.
    output_config: SystemMessageOutputConfig | None = None
    # "never", the default, is what parley does: the text stays in every request
    # that includes it. "next_user_message" is refused (``unsupported_fields``).
    clear_at: Literal["next_user_message", "never"] | None = None

    def sets_output(self) -> bool:
        """Whether it sets an output field: such a message may have empty content, as on
        the API (one with neither content nor a setting is refused)."""
        if self.output_config is None:
            return False
        return self.content is None or self.output_config.effort is not None

    @model_validator(mode="after")
    def _has_something(self) -> SystemMessage:
        if self.content is None and self.output_config is None:
            raise PydanticCustomError(
                "missing_content", "a system message needs `content` or `output_config`"
            )
        return self


def _role_discriminator() -> Any:
    from pydantic import Discriminator

    def pick(value: Any) -> str | None:
        role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
        return tag(role) if isinstance(role, str) else None

    return Discriminator(
        pick,
        custom_error_type="invalid_role",
        custom_error_message="Input should be a message whose 'role' is 'user' or 'assistant'",
    )


Message = Annotated[
    Annotated[UserMessage, Tag(tag("user"))]
    | Annotated[AssistantMessage, Tag(tag("assistant"))]
    | Annotated[SystemMessage, Tag(tag("system"))],
    _role_discriminator(),
]

# --- tools -------------------------------------------------------------------

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,128}$"


class CustomTool(RequestModel):
    type: Literal["custom"] | None = None
    name: Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControlEphemeral | None = None
    strict: bool | None = None
    eager_input_streaming: bool | None = None
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None
    input_examples: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _schema_is_object(self) -> CustomTool:
        if self.input_schema.get("type") != "object":
            raise PydanticCustomError(
                "invalid_input_schema", "input_schema.type: Input should be 'object'"
            )
        return self


# Anthropic-defined client tools: the client executes them; the model is told
# their documented schema (``parley.tools``). Versions as in the SDK types.
CLIENT_TOOL_TYPES = (
    "bash_20241022",
    "bash_20250124",
    "text_editor_20241022",
    "text_editor_20250124",
    "text_editor_20250429",
    "text_editor_20250728",
    "computer_20241022",
    "computer_20250124",
    "computer_20251124",
    "memory_20250818",
)

# Server tools run inside Anthropic's service; parley runs none of them. Those of
# ``parley.wire.server_tools`` are modelled (count_tokens counts them, create
# refuses them by name); the others are refused as soon as they are read.
SERVER_TOOL_PREFIXES = (
    "web_search_",
    "web_fetch_",
    "code_execution_",
    "tool_search_tool_",
    "browser_toolset_",
    "computer_toolset_",
    "mcp_toolset",
    "advisor_",
)


class AnthropicClientTool(RequestModel):
    """An Anthropic-defined client tool: the client runs it, the model is told its
    documented schema (``parley.tools.client_tool``). Options as the SDK types them."""

    type: str
    name: str
    cache_control: CacheControlEphemeral | None = None
    allowed_callers: list[str] | None = None
    defer_loading: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    strict: bool | None = None


class BashTool(AnthropicClientTool):
    type: Literal["bash_20241022", "bash_20250124"]


class TextEditorTool(AnthropicClientTool):
    type: Literal[
        "text_editor_20241022",
        "text_editor_20250124",
        "text_editor_20250429",
        "text_editor_20250728",
    ]
    max_characters: int | None = None  # of a file shown by ``view``; the client's to apply


class ComputerTool(AnthropicClientTool):
    type: Literal["computer_20241022", "computer_20250124", "computer_20251124"]
    display_width_px: int
    display_height_px: int
    display_number: int | None = None
    enable_zoom: bool | None = None


class MemoryTool(AnthropicClientTool):
    type: Literal["memory_20250818"]


class UnmodelledServerTool(KnownUnsupported):
    refusal = "server tool '{kind}' is not supported by parley yet"


def _tool_kind(value: Any) -> str | None:
    raw = value.get("type", "custom") if isinstance(value, dict) else getattr(value, "type", None)
    if raw is None or raw == "custom":
        return tag("custom")
    if not isinstance(raw, str):
        return None
    if raw in CLIENT_TOOL_TYPES:
        return tag(raw.rsplit("_", 1)[0])  # bash, text_editor, computer, memory
    if (family := server_tool_family(raw)) is not None:
        return tag(family)
    if raw.startswith(SERVER_TOOL_PREFIXES):
        return tag("server")
    return None


def _tool_discriminator() -> Any:
    from pydantic import Discriminator

    return Discriminator(
        _tool_kind,
        custom_error_type="invalid_tool_type",
        custom_error_message=(
            "Input should be a custom tool (no 'type', or 'custom') or one of the "
            "Anthropic-defined tools: " + ", ".join(CLIENT_TOOL_TYPES)
        ),
    )


Tool = Annotated[
    Annotated[CustomTool, Tag(tag("custom"))]
    | Annotated[BashTool, Tag(tag("bash"))]
    | Annotated[TextEditorTool, Tag(tag("text_editor"))]
    | Annotated[ComputerTool, Tag(tag("computer"))]
    | Annotated[MemoryTool, Tag(tag("memory"))]
    | Annotated[WebSearchTool, Tag(tag("web_search"))]
    | Annotated[WebFetchTool, Tag(tag("web_fetch"))]
    | Annotated[CodeExecutionTool, Tag(tag("code_execution"))]
    | Annotated[ToolSearchTool, Tag(tag("tool_search"))]
    | Annotated[MCPToolset, Tag(tag("mcp_toolset"))]
    | Annotated[UnmodelledServerTool, Tag(tag("server"))],
    _tool_discriminator(),
]


class ToolChoiceAuto(RequestModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(RequestModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(RequestModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(RequestModel):
    type: Literal["none"]


ToolChoice = Annotated[
    Annotated[ToolChoiceAuto, Tag(tag("auto"))]
    | Annotated[ToolChoiceAny, Tag(tag("any"))]
    | Annotated[ToolChoiceTool, Tag(tag("tool"))]
    | Annotated[ToolChoiceNone, Tag(tag("none"))],
    type_discriminator("tool_choice", ["auto", "any", "tool", "none"]),
]

# --- thinking, output, metadata ------------------------------------------------


# Accepted; parley returns the thinking it produces whichever is asked ("updates",
# beta thinking-display-updates-2026-08-18, is what interactive Claude Code asks for).
ThinkingDisplay = Literal["summarized", "omitted", "updates"]


class ThinkingEnabled(RequestModel):
    type: Literal["enabled"]
    budget_tokens: int
    display: ThinkingDisplay | None = None
    # Declared so it is recognised; refused unless null (``unsupported_fields``).
    block_binding: Any = None


class ThinkingDisabled(RequestModel):
    type: Literal["disabled"]


class ThinkingAdaptive(RequestModel):
    type: Literal["adaptive"]
    display: ThinkingDisplay | None = None
    block_binding: Any = None  # as in ThinkingEnabled


class ThinkingBetweenTools(KnownUnsupported):
    refusal = "thinking.type: '{kind}' is not supported by parley yet"


Thinking = Annotated[
    Annotated[ThinkingEnabled, Tag(tag("enabled"))]
    | Annotated[ThinkingDisabled, Tag(tag("disabled"))]
    | Annotated[ThinkingAdaptive, Tag(tag("adaptive"))]
    | Annotated[ThinkingBetweenTools, Tag(tag("between_tools"))],
    type_discriminator("thinking config", ["enabled", "disabled", "adaptive", "between_tools"]),
]


class JSONOutputFormat(RequestModel):
    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]


class OutputConfig(RequestModel):
    effort: Effort | None = None
    format: JSONOutputFormat | None = None
    # Declared so it is recognised; refused unless null (``unsupported_fields``).
    task_budget: Any = None


class Metadata(RequestModel):
    user_id: Annotated[str, Field(max_length=256)] | None = None


# --- accepted without local effect ----------------------------------------------
# These bill, route or retry requests inside Anthropic's service; a local model
# has nothing of the kind, so they are accepted (and their shapes validated) and
# change nothing. The README lists them under "Accepted without local effect".


class BillingPolicy(RequestModel):
    """Which organization pays for the request."""

    type: Literal["billing_policy"]
    bill_to: Literal["self", "user_profile"] | None = None


class Diagnostics(RequestModel):
    """Asks the service to explain prompt-cache misses against an earlier response."""

    previous_message_id: str | None = None


class FallbackCreditToken(RequestModel):
    """A refused request's credit token, redeemed for cache pricing on the retry."""

    token: str
    mode: Literal["strict", "best_effort"] | None = None


class Fallback(RequestModel):
    """A substitute model the service retries on when the requested one declines."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    speed: Literal["standard", "fast"] | None = None


FallbackCredit = Annotated[
    Annotated[str, Tag(tag("str"))] | Annotated[FallbackCreditToken, Tag(tag("object"))],
    shape_discriminator(lambda v: tag("str") if isinstance(v, str) else tag("object")),
]
Fallbacks = Annotated[
    Annotated[Literal["default"], Tag(tag("str"))] | Annotated[list[Fallback], Tag(tag("list"))],
    shape_discriminator(str_or_list),
]


class DangerousToolUseSafeguard(RequestModel):
    """Asks Anthropic's service to classify the tool calls of the answer (beta
    ``dangerous-tool-use-2026-09-03``, sent by interactive Claude Code 2.1.3xx), with
    the client's permission state as ``classifier_context``. Accepted without local
    effect: parley has no such classifier and reports no ``safeguard_results``, which
    Claude Code reads as the classifier being unavailable, keeping its own checks."""

    type: Literal["dangerous_tool_use"]
    classifier_context: dict[str, Any] | None = None


SystemPrompt = SystemContent


class CountTokensRequest(RequestModel):
    """Body of ``POST /v1/messages/count_tokens``: the create body without output knobs."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: SystemPrompt | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # The beta's first spelling of ``output_config.format`` (SDKs before 2.10 send it).
    output_format: JSONOutputFormat | None = None
    cache_control: CacheControlEphemeral | None = None
    speed: Literal["standard", "fast"] | None = None
    # Accepted: they route or bill requests in Anthropic's service, with no
    # meaning for a local model.
    user_profile_id: str | None = None
    workspace_id: str | None = None
    billing_policy: BillingPolicy | None = None
    context_management: ContextManagement | None = None  # beta: edits before rendering
    # Declared so they are recognised; refused while parley cannot honour them.
    mcp_servers: list[MCPServer] | None = None  # counted; refused by create
    compaction: Summarize | None = None  # beta: summarise the conversation (parley.compaction)

    @model_validator(mode="after")
    def _one_format(self) -> CountTokensRequest:
        config = self.output_config
        if self.output_format is not None and config is not None and config.format is not None:
            raise PydanticCustomError(
                "conflicting_output_format",
                "output_format: give either output_format or output_config.format, not "
                "both (output_format is deprecated)",
            )
        return self

    @property
    def answer_format(self) -> JSONOutputFormat | None:
        """The JSON format the answer text must follow (``output_config.format``)."""
        if self.output_config is not None and self.output_config.format is not None:
            return self.output_config.format
        return self.output_format

    def unsupported_fields(self) -> list[str]:
        """Names of declared parameters that were given but cannot be honoured."""
        names: list[str] = []
        if getattr(self.thinking, "block_binding", None) is not None:
            names.append("thinking.block_binding")
        if self.output_config is not None and self.output_config.task_budget is not None:
            names.append("output_config.task_budget")
        for i, message in enumerate(self.messages):
            if isinstance(message, SystemMessage) and message.clear_at == "next_user_message":
                names.append(f"messages.{i}.clear_at")
        return names

    def effort(self) -> Effort | None:
        """The effort asked for the turn being answered: the last system message's that
        sets one (per-turn control: it holds from its turn on), else the top-level one."""
        for message in reversed(self.messages):
            config = message.output_config if isinstance(message, SystemMessage) else None
            if config is not None and config.effort is not None:
                return config.effort
        return self.output_config.effort if self.output_config is not None else None


class CreateMessageRequest(CountTokensRequest):
    """Body of ``POST /v1/messages``."""

    max_tokens: Annotated[int, Field(ge=0)]
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    # Removed from SDK 2.x but still sent by older clients and frameworks.
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    # Accepted: they route or bill requests in Anthropic's service, with no
    # meaning for a local model.
    inference_geo: str | None = None
    diagnostics: Diagnostics | None = None
    fallback_credit_token: FallbackCredit | None = None
    fallbacks: Fallbacks | None = None  # a local model never declines on policy
    # The ``anthropic-beta`` header's list, which the SDK's batch ``params`` type
    # carries in the body; no local effect, as the header has none.
    betas: list[str] | None = None
    # Accepted without local effect (see ``DangerousToolUseSafeguard``).
    safeguards: list[DangerousToolUseSafeguard] | None = None
    # Declared so they are recognised; refused while parley cannot honour them.
    container: Any = None
    thread: Any = None

    def unsupported_fields(self) -> list[str]:
        """Names of declared parameters that were given but cannot be honoured."""
        refused = ("container", "mcp_servers", "thread")
        return [name for name in refused if getattr(self, name) is not None] + (
            super().unsupported_fields()
        )

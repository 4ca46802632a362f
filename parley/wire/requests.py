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
    content: Annotated[
        Annotated[str, Tag(tag("str"))] | Annotated[list[SystemMessageBlock], Tag(tag("list"))],
        shape_discriminator(str_or_list),
    ]
    # Honoured: its effort replaces the top-level one from this turn on.
    output_config: SystemMessageOutputConfig | None = None
    # Declared so it is recognised; refused unless null (``unsupported_fields``).
    clear_at: Any = None

    def sets_output(self) -> bool:
        """Whether it sets an output field: such a message may have empty content, as on
        the API (one with neither content nor a setting is refused)."""
        return self.output_config is not None and self.output_config.effort is not None


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

# Server tools run inside Anthropic's service; parley has none yet.
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
    """An Anthropic-defined client tool; version-specific options are kept as given."""

    model_config = RequestModel.model_config | {"extra": "allow"}
    type: str
    name: str
    cache_control: CacheControlEphemeral | None = None


class ServerTool(KnownUnsupported):
    refusal = "server tool '{kind}' is not supported by parley yet"


def _tool_kind(value: Any) -> str | None:
    raw = value.get("type", "custom") if isinstance(value, dict) else getattr(value, "type", None)
    if raw is None or raw == "custom":
        return tag("custom")
    if not isinstance(raw, str):
        return None
    if raw in CLIENT_TOOL_TYPES:
        return tag("client")
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
    | Annotated[AnthropicClientTool, Tag(tag("client"))]
    | Annotated[ServerTool, Tag(tag("server"))],
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
    cache_control: CacheControlEphemeral | None = None
    speed: Literal["standard", "fast"] | None = None
    # Accepted: they route or bill requests in Anthropic's service, with no
    # meaning for a local model.
    user_profile_id: str | None = None
    workspace_id: str | None = None
    # Declared so they are recognised; refused while parley cannot honour them.
    context_management: dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    billing_policy: Any = None
    compaction: Any = None

    def unsupported_fields(self) -> list[str]:
        """Names of declared parameters that were given but cannot be honoured."""
        refused = ("mcp_servers", "billing_policy", "compaction")
        names = [name for name in refused if getattr(self, name) is not None]
        if getattr(self.thinking, "block_binding", None) is not None:
            names.append("thinking.block_binding")
        if self.output_config is not None and self.output_config.task_budget is not None:
            names.append("output_config.task_budget")
        for i, message in enumerate(self.messages):
            if isinstance(message, SystemMessage) and message.clear_at is not None:
                names.append(f"messages.{i}.clear_at")
        return names

    def effort(self) -> Effort | None:
        """The effort asked for the turn being answered: the last system message's that
        sets one (per-turn control: it holds from its turn on), else the top-level one."""
        for message in reversed(self.messages):
            if isinstance(message, SystemMessage) and message.sets_output():
                assert message.output_config is not None
                return message.output_config.effort
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
    # Accepted without local effect (see ``DangerousToolUseSafeguard``).
    safeguards: list[DangerousToolUseSafeguard] | None = None
    # Declared so they are recognised; refused while parley cannot honour them.
    container: Any = None
    diagnostics: dict[str, Any] | None = None
    fallback_credit_token: Any = None
    fallbacks: Any = None
    thread: Any = None

    def unsupported_fields(self) -> list[str]:
        """Names of declared parameters that were given but cannot be honoured."""
        refused = (
            "container",
            "diagnostics",
            "fallback_credit_token",
            "fallbacks",
            "thread",
        )
        return [name for name in refused if getattr(self, name) is not None] + (
            super().unsupported_fields()
        )

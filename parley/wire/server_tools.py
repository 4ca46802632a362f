"""Server tools (``tools[]`` entries the API runs itself) and ``mcp_servers``.

parley runs none of them: ``POST /v1/messages`` refuses each by name
(``parley.conversation.rules``). They are modelled all the same, one class per
family with the options the SDK gives it, so that ``count_tokens`` takes the
whole request a client would send and counts each tool as it is described to
the model (``parley.tools.server_tool``), and so a wrongly shaped option is a
400 naming its path rather than anything goes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Tag, model_validator
from pydantic_core import PydanticCustomError

from parley.wire.common import CacheControlEphemeral, RequestModel, tag, type_discriminator
from parley.wire.content import CitationsConfig

WebSearchType = Literal["web_search_20250305", "web_search_20260209", "web_search_20260318"]
WebFetchType = Literal[
    "web_fetch_20250910", "web_fetch_20260209", "web_fetch_20260309", "web_fetch_20260318"
]
CodeExecutionType = Literal[
    "code_execution_20250522",
    "code_execution_20250825",
    "code_execution_20260120",
    "code_execution_20260521",
]
ToolSearchType = Literal[
    "tool_search_tool_bm25",
    "tool_search_tool_bm25_20251119",
    "tool_search_tool_regex",
    "tool_search_tool_regex_20251119",
]


class _ServerTool(RequestModel):
    """Options every server tool takes."""

    type: str
    cache_control: CacheControlEphemeral | None = None
    allowed_callers: list[str] | None = None
    defer_loading: bool | None = None
    strict: bool | None = None


class UserLocation(RequestModel):
    type: Literal["approximate"]
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class WebSearchTool(_ServerTool):
    type: WebSearchType
    name: Literal["web_search"]
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    max_uses: int | None = None
    user_location: UserLocation | None = None
    response_inclusion: Literal["full", "excluded"] | None = None


class URLSourceToolReference(RequestModel):
    type: Literal["tool_reference"]
    name: str


class URLSourceAll(RequestModel):
    type: Literal["all"]


class URLSourceNone(RequestModel):
    type: Literal["none"]


class URLSourceOnly(RequestModel):
    type: Literal["only"]
    tools: list[URLSourceToolReference]


class URLSourceExcept(RequestModel):
    type: Literal["except"]
    tools: list[URLSourceToolReference]


URLSourceFilter = Annotated[
    Annotated[URLSourceAll, Tag(tag("all"))]
    | Annotated[URLSourceNone, Tag(tag("none"))]
    | Annotated[URLSourceOnly, Tag(tag("only"))]
    | Annotated[URLSourceExcept, Tag(tag("except"))],
    type_discriminator("URL source filter", ["all", "none", "only", "except"]),
]
UserInputFilter = Annotated[
    Annotated[URLSourceAll, Tag(tag("all"))] | Annotated[URLSourceNone, Tag(tag("none"))],
    type_discriminator("user input filter", ["all", "none"]),
]


class WebFetchURLSources(RequestModel):
    client_tool_results: URLSourceFilter | None = None
    server_tool_results: URLSourceFilter | None = None
    user_input: UserInputFilter | None = None


class WebFetchTool(_ServerTool):
    type: WebFetchType
    name: Literal["web_fetch"]
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    citations: CitationsConfig | None = None
    max_content_tokens: int | None = None
    max_uses: int | None = None
    url_sources: WebFetchURLSources | None = None
    use_cache: bool | None = None
    response_inclusion: Literal["full", "excluded"] | None = None


class CodeExecutionTool(_ServerTool):
    type: CodeExecutionType
    name: Literal["code_execution"]


class ToolSearchTool(_ServerTool):
    type: ToolSearchType
    name: Literal["tool_search_tool_bm25", "tool_search_tool_regex"]


class MCPToolConfig(RequestModel):
    defer_loading: bool | None = None
    enabled: bool | None = None


class MCPToolDefinition(RequestModel):
    """An MCP server's tool, described by the client (the API lists it itself)."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None

    @model_validator(mode="after")
    def _schema_is_object(self) -> MCPToolDefinition:
        if self.input_schema.get("type") != "object":  # as a custom tool's
            raise PydanticCustomError(
                "invalid_input_schema", "input_schema.type: Input should be 'object'"
            )
        return self


class MCPToolset(RequestModel):
    """The tools of one server of ``mcp_servers``."""

    type: Literal["mcp_toolset"]
    mcp_server_name: str
    cache_control: CacheControlEphemeral | None = None
    configs: dict[str, MCPToolConfig] | None = None
    default_config: MCPToolConfig | None = None
    tools: list[MCPToolDefinition] | None = None


ServerTool = WebSearchTool | WebFetchTool | CodeExecutionTool | ToolSearchTool | MCPToolset


def server_tool_family(kind: str) -> str | None:
    """The union tag of the family a server tool ``type`` belongs to, if parley models it."""
    for family, types in (
        ("web_search", get_args(WebSearchType)),
        ("web_fetch", get_args(WebFetchType)),
        ("code_execution", get_args(CodeExecutionType)),
        ("tool_search", get_args(ToolSearchType)),
        ("mcp_toolset", ("mcp_toolset",)),
    ):
        if kind in types:
            return family
    return None


class MCPToolConfiguration(RequestModel):
    allowed_tools: list[str] | None = None
    enabled: bool | None = None


class MCPServer(RequestModel):
    """An ``mcp_servers`` entry: an MCP server the API would connect to by URL."""

    type: Literal["url"]
    name: str
    url: str
    authorization_token: str | None = None
    tool_configuration: MCPToolConfiguration | None = None

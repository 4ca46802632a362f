"""Request content blocks (``messages[].content[]``), one class per block type.

Blocks the API defines but parley cannot serve yet (server-tool results,
container uploads, MCP blocks) are known types that fail validation with a
message saying so, instead of an "unknown type" error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag

from parley.wire.common import (
    CacheControlEphemeral,
    KnownUnsupported,
    RequestModel,
    shape_discriminator,
    str_or_list,
    tag,
    type_discriminator,
)

# --- sources -----------------------------------------------------------------

ImageMediaType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]


class Base64ImageSource(RequestModel):
    type: Literal["base64"]
    media_type: ImageMediaType
    data: str


class URLSource(RequestModel):
    type: Literal["url"]
    url: str


class FileSource(RequestModel):
    type: Literal["file"]
    file_id: str


ImageSource = Annotated[
    Annotated[Base64ImageSource, Tag(tag("base64"))]
    | Annotated[URLSource, Tag(tag("url"))]
    | Annotated[FileSource, Tag(tag("file"))],
    type_discriminator("image source", ["base64", "url", "file"]),
]


class Base64PDFSource(RequestModel):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str


class PlainTextSource(RequestModel):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class CitationsConfig(RequestModel):
    enabled: bool | None = None


# Citations echoed back from earlier responses; their shapes are many and
# purely informational on input, so they are kept as plain objects.
CitationParam = dict[str, Any]


class TextBlock(RequestModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControlEphemeral | None = None
    citations: list[CitationParam] | None = None


class ImageBlock(RequestModel):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControlEphemeral | None = None
    transformations: dict[str, Any] | None = None


class ContentSource(RequestModel):
    type: Literal["content"]
    content: Annotated[
        Annotated[str, Tag(tag("str"))]
        | Annotated[
            list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]], Tag(tag("list"))
        ],
        shape_discriminator(str_or_list),
    ]


DocumentSource = Annotated[
    Annotated[Base64PDFSource, Tag(tag("base64"))]
    | Annotated[PlainTextSource, Tag(tag("text"))]
    | Annotated[ContentSource, Tag(tag("content"))]
    | Annotated[URLSource, Tag(tag("url"))]
    | Annotated[FileSource, Tag(tag("file"))],
    type_discriminator("document source", ["base64", "text", "content", "url", "file"]),
]


class DocumentBlock(RequestModel):
    type: Literal["document"]
    source: DocumentSource
    cache_control: CacheControlEphemeral | None = None
    citations: CitationsConfig | None = None
    context: str | None = None
    title: str | None = None


class SearchResultBlock(RequestModel):
    type: Literal["search_result"]
    content: list[TextBlock]
    source: str
    title: str
    cache_control: CacheControlEphemeral | None = None
    citations: CitationsConfig | None = None


class ThinkingBlock(RequestModel):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


class ToolUseBlock(RequestModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControlEphemeral | None = None
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


class ToolReferenceBlock(RequestModel):
    type: Literal["tool_reference"]
    tool_name: str
    cache_control: CacheControlEphemeral | None = None


class CompactionBlock(RequestModel):
    """A summary parley returned (beta compaction), sent back in an assistant
    message: the conversation before it is rendered as the summary. ``content``
    None is a compaction that failed, a no-op."""

    type: Literal["compaction"]
    content: str | None = None
    signature: str | None = None
    encrypted_content: str | None = None  # parley gives none out
    tool_changes: list[dict[str, Any]] | None = None  # parley gives none out
    cache_control: CacheControlEphemeral | None = None


class UnsupportedBlock(KnownUnsupported):
    refusal = "content blocks of type '{kind}' are not supported by parley yet"


ToolResultItem = Annotated[
    Annotated[TextBlock, Tag(tag("text"))]
    | Annotated[ImageBlock, Tag(tag("image"))]
    | Annotated[DocumentBlock, Tag(tag("document"))]
    | Annotated[SearchResultBlock, Tag(tag("search_result"))]
    | Annotated[ToolReferenceBlock, Tag(tag("tool_reference"))]
    | Annotated[UnsupportedBlock, Tag(tag("unsupported"))],
    type_discriminator(
        "tool result content block",
        ["text", "image", "document", "search_result", "tool_reference", "browser_state"],
        grouped={"browser_state": "unsupported"},
    ),
]


class ToolResultBlock(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: (
        Annotated[
            Annotated[str, Tag(tag("str"))] | Annotated[list[ToolResultItem], Tag(tag("list"))],
            shape_discriminator(str_or_list),
        ]
        | None
    ) = None
    is_error: bool | None = None
    cache_control: CacheControlEphemeral | None = None
    toolset_name: str | None = None


# Block types of the API that need server-side tools or services parley has not
# built yet. They are recognised so the error can say what is missing.
UNSUPPORTED_BLOCK_TYPES = (
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
    "mcp_tool_use",
    "mcp_tool_result",
    "advisor_tool_result",
    "fallback",
    "mcp_tool_listing",
    "tool_addition",
    "tool_removal",
)


SUPPORTED_BLOCK_TYPES = (
    "text",
    "image",
    "document",
    "search_result",
    "thinking",
    "redacted_thinking",
    "tool_use",
    "tool_result",
    "compaction",
)

ContentBlock = Annotated[
    Annotated[TextBlock, Tag(tag("text"))]
    | Annotated[ImageBlock, Tag(tag("image"))]
    | Annotated[DocumentBlock, Tag(tag("document"))]
    | Annotated[SearchResultBlock, Tag(tag("search_result"))]
    | Annotated[ThinkingBlock, Tag(tag("thinking"))]
    | Annotated[RedactedThinkingBlock, Tag(tag("redacted_thinking"))]
    | Annotated[ToolUseBlock, Tag(tag("tool_use"))]
    | Annotated[ToolResultBlock, Tag(tag("tool_result"))]
    | Annotated[CompactionBlock, Tag(tag("compaction"))]
    | Annotated[UnsupportedBlock, Tag(tag("unsupported"))],
    type_discriminator(
        "content block",
        [*SUPPORTED_BLOCK_TYPES, *UNSUPPORTED_BLOCK_TYPES],
        grouped={t: "unsupported" for t in UNSUPPORTED_BLOCK_TYPES},
    ),
]

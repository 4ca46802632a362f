"""count_tokens takes the whole beta request (issue 18): every tool type of the
SDK's beta ``tools`` is counted as the model is told of it; create still
refuses the server tools parley cannot run, by name.

Through the SDK's beta surface, with strict response validation."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.conftest import InProcess

MESSAGES: list[Any] = [{"role": "user", "content": "What is new today?"}]
MCP_SERVERS: list[Any] = [{"type": "url", "name": "docs", "url": "https://mcp.example/sse"}]

COMMON = {"allowed_callers": ["direct"], "defer_loading": False, "strict": True}
CLIENT_OPTIONS = {**COMMON, "input_examples": [{"command": "ls"}]}

TOOLS: list[dict[str, Any]] = [
    {"type": "bash_20241022", "name": "bash", **CLIENT_OPTIONS},
    {"type": "bash_20250124", "name": "bash", **CLIENT_OPTIONS},
    {"type": "text_editor_20241022", "name": "str_replace_editor", **CLIENT_OPTIONS},
    {"type": "text_editor_20250124", "name": "str_replace_editor", **CLIENT_OPTIONS},
    {"type": "text_editor_20250429", "name": "str_replace_based_edit_tool", **CLIENT_OPTIONS},
    {
        "type": "text_editor_20250728",
        "name": "str_replace_based_edit_tool",
        "max_characters": 10000,
        **CLIENT_OPTIONS,
    },
    {
        "type": "computer_20241022",
        "name": "computer",
        "display_width_px": 1024,
        "display_height_px": 768,
        "display_number": 1,
        **CLIENT_OPTIONS,
    },
    {
        "type": "computer_20250124",
        "name": "computer",
        "display_width_px": 1024,
        "display_height_px": 768,
        **CLIENT_OPTIONS,
    },
    {
        "type": "computer_20251124",
        "name": "computer",
        "display_width_px": 1024,
        "display_height_px": 768,
        "enable_zoom": True,
        **CLIENT_OPTIONS,
    },
    {"type": "memory_20250818", "name": "memory", **CLIENT_OPTIONS},
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "eager_input_streaming": True,
        **CLIENT_OPTIONS,
    },
    *(
        {
            "type": kind,
            "name": "web_search",
            "allowed_domains": ["example.com"],
            "max_uses": 3,
            "user_location": {"type": "approximate", "city": "Lyon", "country": "FR"},
            **COMMON,
        }
        for kind in ("web_search_20250305", "web_search_20260209", "web_search_20260318")
    ),
    *(
        {
            "type": kind,
            "name": "web_fetch",
            "blocked_domains": ["example.org"],
            "citations": {"enabled": True},
            "max_content_tokens": 5000,
            "url_sources": {
                "user_input": {"type": "all"},
                "client_tool_results": {
                    "type": "only",
                    "tools": [{"type": "tool_reference", "name": "bash"}],
                },
            },
            **COMMON,
        }
        for kind in (
            "web_fetch_20250910",
            "web_fetch_20260209",
            "web_fetch_20260309",
            "web_fetch_20260318",
        )
    ),
    *(
        {"type": kind, "name": "code_execution", **COMMON}
        for kind in (
            "code_execution_20250522",
            "code_execution_20250825",
            "code_execution_20260120",
            "code_execution_20260521",
        )
    ),
    {"type": "tool_search_tool_bm25_20251119", "name": "tool_search_tool_bm25", **COMMON},
    {"type": "tool_search_tool_bm25", "name": "tool_search_tool_bm25"},
    {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex", **COMMON},
    {"type": "tool_search_tool_regex", "name": "tool_search_tool_regex"},
    {"type": "mcp_toolset", "mcp_server_name": "docs", "default_config": {"enabled": True}},
    {
        "type": "mcp_toolset",
        "mcp_server_name": "docs",
        "configs": {"search_docs": {"defer_loading": True}},
        "tools": [
            {
                "name": "search_docs",
                "description": "Search the documentation.",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            }
        ],
    },
]


@pytest.fixture(scope="module")
def client(in_process: InProcess) -> anthropic.Anthropic:
    return in_process.client()


def count(client: anthropic.Anthropic, **extra: Any) -> int:
    counted = client.beta.messages.count_tokens(model="scripted", messages=MESSAGES, **extra)
    return counted.input_tokens


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: str(t.get("type", "custom")))
def test_count_tokens_counts_each_beta_tool(client: anthropic.Anthropic, tool: Any) -> None:
    bare = count(client, mcp_servers=MCP_SERVERS)
    with_tool = count(client, tools=[tool], mcp_servers=MCP_SERVERS)
    assert with_tool > bare
    assert count(client, tools=[tool], mcp_servers=MCP_SERVERS) == with_tool


def test_count_tokens_takes_every_tool_at_once(client: anthropic.Anthropic) -> None:
    # Tool names are unique within a request: one tool of each name.
    by_name = {t.get("name", t.get("mcp_server_name")): t for t in TOOLS}
    assert count(client, tools=list(by_name.values()), mcp_servers=MCP_SERVERS) > count(client)


def test_count_tokens_ignores_compaction(client: anthropic.Anthropic) -> None:
    assert count(client, compaction={"type": "summarize"}) == count(client)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": "3"}]},
            "tools.0.max_uses",
        ),
        ({"mcp_servers": [{"type": "url", "name": "docs"}]}, "mcp_servers.0.url"),
        (
            {"tools": [{"type": "mcp_toolset", "mcp_server_name": "nowhere"}]},
            "tools.0.mcp_server_name",
        ),
    ],
)
def test_count_tokens_names_a_bad_shape(
    client: anthropic.Anthropic, extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        count(client, **extra)
    assert named in caught.value.message


SERVER_TOOLS = [
    t for t in TOOLS if str(t.get("type", "")).startswith(("web_", "code_", "tool_s", "mcp"))
]


@pytest.mark.parametrize("tool", SERVER_TOOLS, ids=lambda t: str(t["type"]))
def test_create_refuses_server_tools_by_name(client: anthropic.Anthropic, tool: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.messages.create(model="scripted", max_tokens=5, messages=MESSAGES, tools=[tool])
    assert f"tools.0: server tool '{tool['type']}' is not supported by parley yet" in (
        caught.value.message
    )


def test_create_refuses_mcp_servers(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.messages.create(
            model="scripted", max_tokens=5, messages=MESSAGES, mcp_servers=MCP_SERVERS
        )
    assert "mcp_servers" in caught.value.message and "not supported" in caught.value.message

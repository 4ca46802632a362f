"""What each Anthropic-defined client tool is, for models that have never seen one.

The API lets a request name a tool by type (``bash_20250124``,
``text_editor_20250728``...) without a schema; the client executes it. parley
presents each to the model with its documented input schema and purpose.
"""

from __future__ import annotations

from typing import Any

from parley.wire.server_tools import MCPToolset, ServerTool

_BASH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "description": "The bash command to run."},
        "restart": {"type": "boolean", "description": "Restart the bash session."},
    },
}

_EDITOR_COMMANDS = ["view", "create", "str_replace", "insert"]
_EDITOR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "enum": _EDITOR_COMMANDS},
        "path": {"type": "string", "description": "Absolute path of a file or directory."},
        "file_text": {"type": "string", "description": "Content of a file to create."},
        "old_str": {"type": "string", "description": "Exact text to replace."},
        "new_str": {"type": "string", "description": "Replacement or inserted text."},
        "insert_line": {"type": "integer", "description": "Line after which to insert."},
        "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    },
    "required": ["command", "path"],
}

_MEMORY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {
            "type": "string",
            "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
        },
        "path": {"type": "string", "description": "A path under /memories."},
        "file_text": {"type": "string"},
        "old_str": {"type": "string"},
        "new_str": {"type": "string"},
        "insert_line": {"type": "integer"},
        "insert_text": {"type": "string"},
        "old_path": {"type": "string"},
        "new_path": {"type": "string"},
        "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    },
    "required": ["command"],
}

_COMPUTER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {
            "type": "string",
            "enum": [
                "key",
                "type",
                "mouse_move",
                "left_click",
                "left_click_drag",
                "right_click",
                "middle_click",
                "double_click",
                "triple_click",
                "screenshot",
                "cursor_position",
                "scroll",
                "wait",
                "hold_key",
                "left_mouse_down",
                "left_mouse_up",
                "zoom",
            ],
        },
        "coordinate": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "text": {"type": "string"},
        "scroll_direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
        "scroll_amount": {"type": "integer"},
        "duration": {"type": "number"},
    },
    "required": ["action"],
}

_PURPOSE: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": (
        "Run commands in a persistent bash shell on the user's machine. State persists "
        "between calls; use restart to begin a fresh session.",
        _BASH,
    ),
    "text_editor": (
        "View, create and edit text files: view a file or directory, create a file, "
        "replace an exact string, or insert text after a line.",
        _EDITOR,
    ),
    "memory": (
        "Store and retrieve information across conversations in files under /memories: "
        "view, create, edit, delete and rename them.",
        _MEMORY,
    ),
    "computer": (
        "Control the user's computer through its screen, mouse and keyboard: take "
        "screenshots, move and click the mouse, type and press keys.",
        _COMPUTER,
    ),
}


def client_tool(tool_type: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The description and input schema presented for an Anthropic-defined tool."""
    family = tool_type.rsplit("_", 1)[0]
    description, schema = _PURPOSE[family]
    if family == "text_editor" and tool_type != "text_editor_20250728":
        schema = {**schema, "properties": {**schema["properties"]}}
        commands = [*_EDITOR_COMMANDS, "undo_edit"]
        schema["properties"]["command"] = {"type": "string", "enum": commands}
    if family == "computer" and options.get("display_width_px"):
        size = f"{options.get('display_width_px')}x{options.get('display_height_px')}"
        description += f" The display is {size} pixels."
    return description, schema


# Server tools: parley runs none (create refuses them), but count_tokens counts
# them as a model would be told of them, each a tool of the prompt like a client
# tool. Texts and schemas follow the tools' documentation; the API's own
# rendering (and so its count) is Anthropic's and differs.
_SERVER: dict[str, tuple[str, dict[str, Any]]] = {
    "web_search": (
        "Search the web and get back result pages with their titles, URLs and content.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "The search query."}},
            "required": ["query"],
        },
    ),
    "web_fetch": (
        "Fetch the full content of a web page or PDF at a URL given in the conversation.",
        {
            "type": "object",
            "properties": {"url": {"type": "string", "description": "The URL to fetch."}},
            "required": ["url"],
        },
    ),
    "code_execution": (
        "Run code in a sandboxed container: bash commands, and creating, viewing and "
        "editing files.",
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The code or command to run."}
            },
            "required": ["code"],
        },
    ),
    "tool_search_tool_bm25": (
        "Search the deferred tools by a natural-language query; matching tools become "
        "available to call.",
        {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    ),
    "tool_search_tool_regex": (
        "Search the deferred tools' names and descriptions with a regular expression; "
        "matching tools become available to call.",
        {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["pattern"],
        },
    ),
}


def server_tools(tool: ServerTool) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, description, input schema)`` of each tool a server tool entry gives."""
    if isinstance(tool, MCPToolset):
        if tool.tools:
            return [(t.name, t.description or "", t.input_schema) for t in tool.tools]
        # The API lists the server's tools itself; parley connects to no MCP server.
        description = f"Call a tool of the MCP server '{tool.mcp_server_name}'."
        schema = {
            "type": "object",
            "properties": {"tool": {"type": "string"}, "input": {"type": "object"}},
            "required": ["tool", "input"],
        }
        return [(tool.mcp_server_name, description, schema)]
    description, schema = _SERVER[tool.name]
    options = []
    allowed = getattr(tool, "allowed_domains", None)
    blocked = getattr(tool, "blocked_domains", None)
    if allowed:
        options.append("Only these domains: " + ", ".join(allowed) + ".")
    if blocked:
        options.append("Never these domains: " + ", ".join(blocked) + ".")
    if uses := getattr(tool, "max_uses", None):
        options.append(f"At most {uses} uses.")
    return [(tool.name, " ".join([description, *options]), schema)]

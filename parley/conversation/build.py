"""From a validated request to the engine's view of it.

``build_conversation`` applies the API's semantics that do not depend on the
model: system prompt as string or blocks, ``role: "system"`` turns kept in
place, consecutive same-role turns merged, a final assistant turn taken as a
prefill, empty content refused; content blocks are flattened into parts
(documents and search results become text, thinking is verified); a
compaction block sent back replaces everything before it with its summary
(``compaction.py``). What the
served model cannot take is refused with the path of the offending part
(``rules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from parley.conversation.claude_code import normalize_billing_line
from parley.conversation.compaction import compaction_start, only_void_compactions, summary_turn
from parley.conversation.context_edits import check_context_management
from parley.conversation.marks import Marks
from parley.conversation.rules import (
    check_answer_format,
    check_breakpoints,
    check_schema,
    check_tool_pairing,
    refuse_unsupported,
    thinking_budget,
)
from parley.conversation.types import (
    Capabilities,
    Conversation,
    ImagePart,
    Part,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
    Turn,
)
from parley.errors import InvalidRequestError, UnsupportedFeatureError
from parley.thinking import Signer
from parley.tools import client_tool, server_tools
from parley.wire import content as wc
from parley.wire import requests as wr
from parley.wire import server_tools as ws


def build_conversation(
    req: wr.CountTokensRequest,
    caps: Capabilities,
    *,
    model: str,
    signer: Signer | None = None,
) -> Conversation:
    """Validate what pydantic cannot and produce the engine's conversation."""
    refuse_unsupported(req, caps, model=model)
    check_breakpoints(req)
    check_context_management(req)
    budget = thinking_budget(req)
    marks = Marks(caps.prompt_cache)
    context = _Context(caps, model, signer, marks)
    for i, tool in enumerate(req.tools or ()):
        if isinstance(tool, wr.CustomTool):
            check_schema(tool.input_schema, f"tools.{i}.input_schema")
    tools = tuple(spec for t in req.tools or () for spec in _tool_specs(t, marks))
    system = _system_text(req.system, marks)
    turns: list[Turn] = []
    start = compaction_start(req.messages, signer)
    for i, message in enumerate(req.messages):
        last = i == len(req.messages) - 1
        # Top-level cache_control marks the last block of the request.
        auto = req.cache_control if last else None
        skip = 0
        if start is not None:
            if i < start.message:
                continue  # summarised
            if i == start.message:
                turn = summary_turn(start.content)
                tag = marks.tag(start.cache_control)
                turns.append(Turn("user", (_tagged(turn.parts[0], tag),)) if tag else turn)
                skip = start.block + 1
        parts = _parts(message, context, path=f"messages.{i}", auto=auto, skip=skip)
        if not parts and (skip or only_void_compactions(message)):
            continue
        if not parts and isinstance(message, wr.SystemMessage) and message.sets_output():
            # Only a per-turn output setting (Claude Code's --bare sends these): no turn.
            continue
        if not parts and not (last and message.role == "assistant"):
            raise InvalidRequestError(
                f"messages.{i}: all messages must have non-empty content except for "
                "the optional final assistant message"
            )
        if turns and turns[-1].role == message.role:
            turns[-1] = Turn(message.role, turns[-1].parts + parts)
        else:
            turns.append(Turn(message.role, parts))
    check_tool_pairing(req.messages)

    prefill = ""
    if turns and turns[-1].role == "assistant":
        final = turns.pop()
        if budget is not None:
            raise InvalidRequestError(
                f"messages.{len(req.messages) - 1}.content.0.type: Expected `thinking` or "
                "`redacted_thinking`, but found `text`. When `thinking` is enabled, a final "
                "`assistant` message must start with a thinking block; parley does not continue "
                "a prefill while thinking"
            )
        if any(not isinstance(p, TextPart) for p in final.parts):
            raise InvalidRequestError(
                "messages: the final assistant message may only contain text to continue "
                "(a prefill); tool_use blocks need a following user turn with their results"
            )
        prefill = marks.untag("".join(p.text for p in final.parts if isinstance(p, TextPart)))
        if prefill != prefill.rstrip():
            raise InvalidRequestError(
                "messages: final assistant content cannot end with trailing whitespace"
            )
    check_answer_format(req, bool(prefill))
    if not any(t.role == "user" for t in turns):
        raise InvalidRequestError("messages: at least one user message is required")

    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools: Tool names must be unique.")
    choice = req.tool_choice
    tool_name = choice.name if isinstance(choice, wr.ToolChoiceTool) else None
    if tool_name is not None and tool_name not in {t.name for t in tools}:
        raise InvalidRequestError(f"tool_choice.name: no tool named '{tool_name}' in tools")
    return Conversation(
        system=system,
        turns=tuple(turns),
        prefill=prefill,
        tools=tools,
        tool_choice=choice.type if choice is not None else "auto",
        tool_name=tool_name,
        disable_parallel_tool_use=bool(getattr(choice, "disable_parallel_tool_use", False)),
        thinking_budget=budget,
        marks=tuple(marks.found),
        answer_schema=dict(req.answer_format.schema_) if req.answer_format is not None else None,
    )


@dataclass(frozen=True)
class _Context:
    caps: Capabilities
    model: str
    signer: Signer | None
    marks: Marks


def _system_text(system: str | list[wc.TextBlock] | None, marks: Marks) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return normalize_billing_line(system) or None
    texts = [normalize_billing_line(b.text) + marks.tag(b.cache_control) for b in system]
    return "\n\n".join(texts) or None


def _parts(
    message: wr.Message, ctx: _Context, *, path: str, auto: Any = None, skip: int = 0
) -> tuple[Part, ...]:
    """The parts of ``message`` from its block ``skip`` on."""
    content = message.content
    if content is None:  # a system message of output_config only (refused before this)
        return ()
    if isinstance(content, str):
        return (TextPart(content + ctx.marks.tag(auto)),) if content else ()
    parts: list[Part] = []
    for j, block in enumerate(content):
        if j < skip:
            continue
        produced = _block_parts(block, ctx, path=f"{path}.content.{j}")
        control = getattr(block, "cache_control", None)
        if control is None and j == len(content) - 1:
            control = auto
        tag = ctx.marks.tag(control) if produced else ""
        if tag:
            produced[-1] = _tagged(produced[-1], tag)
        parts.extend(produced)
    return tuple(parts)


def _tagged(part: Part, tag: str) -> Part:
    """``part`` with a breakpoint tag right after its text."""
    match part:
        case TextPart(text=text):
            return TextPart(text + tag)
        case ToolResultPart():
            return ToolResultPart(part.tool_use_id, part.text + tag, part.is_error)
        case ToolCallPart():
            return ToolCallPart(part.id, part.name, part.input, mark=tag)
    return part


def _block_parts(block: Any, ctx: _Context, *, path: str) -> list[Part]:
    caps, model = ctx.caps, ctx.model
    match block:
        case wc.TextBlock(text=text):
            if not text:
                raise InvalidRequestError(f"{path}.text: text content blocks must be non-empty")
            return [TextPart(text)]
        case wc.ImageBlock(source=source):
            if not caps.images:
                raise UnsupportedFeatureError(
                    f"{path}: model '{model}' does not support image input"
                )
            if not isinstance(source, wc.Base64ImageSource):
                raise UnsupportedFeatureError(
                    f"{path}.source: image sources of type '{source.type}' are not supported "
                    "by parley yet (send the image as base64)"
                )
            return [ImagePart(source.media_type, source.data)]
        case wc.DocumentBlock(source=source, title=title, context=context):
            return [TextPart(_document_text(source, title, context, path=path))]
        case wc.SearchResultBlock(title=title, source=source, content=blocks):
            body = "\n".join(b.text for b in blocks)
            return [TextPart(f"Search result: {title}\nSource: {source}\n{body}")]
        case wc.ToolReferenceBlock(tool_name=name):
            # A tool search's answer: the named tool is in the prompt already, as
            # parley presents deferred tools with the others.
            return [TextPart(f"Tool available: {name}")]
        case wc.ThinkingBlock(thinking=thinking, signature=signature):
            if ctx.signer is None or not ctx.signer.verify(thinking, signature):
                raise InvalidRequestError(
                    f"{path}.signature: Invalid `signature` in `thinking` block"
                )
            return [ThinkingPart(thinking)]
        case wc.RedactedThinkingBlock(data=data):
            opened = ctx.signer.unseal(data) if ctx.signer is not None else None
            if opened is None:
                raise InvalidRequestError(
                    f"{path}.data: Invalid `data` in `redacted_thinking` block"
                )
            return [ThinkingPart(opened)]
        case wc.ToolUseBlock(id=tool_id, name=name, input=tool_input):
            if not caps.tools:
                raise UnsupportedFeatureError(
                    f"{path}: model '{model}' does not support tool use yet"
                )
            return [ToolCallPart(tool_id, name, tool_input)]
        case wc.ToolResultBlock():
            if not caps.tools:
                raise UnsupportedFeatureError(
                    f"{path}: model '{model}' does not support tool use yet"
                )
            return [_tool_result(block, ctx, path=path)]
        case wc.CompactionBlock():
            return []  # checked by compaction_start; only the last one with content counts
    raise InvalidRequestError(f"{path}: unexpected content block")


def _document_text(source: Any, title: str | None, context: str | None, *, path: str) -> str:
    if isinstance(source, wc.PlainTextSource):
        body = source.data
    elif isinstance(source, wc.ContentSource):
        if isinstance(source.content, str):
            body = source.content
        else:
            for k, item in enumerate(source.content):
                if isinstance(item, wc.ImageBlock):
                    raise UnsupportedFeatureError(
                        f"{path}.source.content.{k}: images in documents are not supported"
                    )
            body = "\n".join(b.text for b in source.content if isinstance(b, wc.TextBlock))
    else:
        raise UnsupportedFeatureError(
            f"{path}.source: document sources of type '{source.type}' are not supported by "
            "parley yet (use a 'text' or 'content' source)"
        )
    header = "\n".join(x for x in (f"Document: {title}" if title else "", context or "") if x)
    return f"{header}\n{body}" if header else body


def _tool_result(block: wc.ToolResultBlock, ctx: _Context, *, path: str) -> Part:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        pieces: list[str] = []
        for k, item in enumerate(block.content):
            for part in _block_parts(item, ctx, path=f"{path}.content.{k}"):
                if isinstance(part, ImagePart):
                    raise UnsupportedFeatureError(
                        f"{path}.content.{k}: images in tool results are not supported by parley "
                        "yet"
                    )
                if isinstance(part, TextPart):
                    pieces.append(part.text)
        text = "\n".join(pieces)
    return ToolResultPart(block.tool_use_id, text, bool(block.is_error))


def _tool_specs(tool: Any, marks: Marks) -> list[ToolSpec]:
    tag = marks.tag(getattr(tool, "cache_control", None))
    if isinstance(tool, wr.CustomTool):
        return [
            ToolSpec(
                tool.name, (tool.description or "") + tag, tool.input_schema, bool(tool.strict)
            )
        ]
    if isinstance(tool, ws.ServerTool):  # only in count_tokens: create refuses them
        specs = [ToolSpec(*spec) for spec in server_tools(tool)]
        # The breakpoint goes on the entry's last tool, as on a single tool.
        return [*specs[:-1], replace(specs[-1], description=specs[-1].description + tag)]
    description, schema = client_tool(tool.type, tool.model_dump(exclude_none=True))
    return [ToolSpec(tool.name, description + tag, schema)]

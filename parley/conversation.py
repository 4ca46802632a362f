"""From a validated request to the engine's view of it.

``build_conversation`` applies the API's semantics that do not depend on the
model: system prompt as string or blocks, ``role: "system"`` turns kept in
place, consecutive same-role turns merged, a final assistant turn taken as a
prefill, empty content refused. It also refuses, with the path of the
offending part, whatever the served model cannot take (images on a text-only
model, tools on an engine without tool calling, features not built yet).

The result is made of frozen dataclasses; no wire model travels further.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from parley.errors import InvalidRequestError, UnsupportedFeatureError
from parley.thinking import Signer
from parley.tools import client_tool
from parley.wire import content as wc
from parley.wire import requests as wr

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ToolCallPart:
    id: str
    name: str
    input: dict[str, Any]
    mark: str = ""  # a cache breakpoint tag, when the block had cache_control


@dataclass(frozen=True)
class ToolResultPart:
    tool_use_id: str
    text: str
    is_error: bool = False


@dataclass(frozen=True)
class ThinkingPart:
    text: str


Part = TextPart | ToolCallPart | ToolResultPart | ThinkingPart


@dataclass(frozen=True)
class Turn:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    """What the served model can take; everything else is refused up front."""

    images: bool = False
    tools: bool = False
    prompt_cache: bool = False  # the engine keeps KV state at cache_control breakpoints


@dataclass(frozen=True)
class CacheMark:
    """A ``cache_control`` breakpoint: ``tag`` is written into the text right after
    the marked block, and the engine turns its place in the rendered prompt into
    a token position (then removes it)."""

    tag: str
    ttl: Literal["5m", "1h"]


@dataclass(frozen=True)
class Conversation:
    """A request as the engine sees it: what to render and what to continue."""

    system: str | None
    turns: tuple[Turn, ...]
    prefill: str = ""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    tool_name: str | None = None
    disable_parallel_tool_use: bool = False
    thinking_budget: int | None = None  # open a reasoning section of at most this many tokens
    marks: tuple[CacheMark, ...] = ()  # cache breakpoints, in no particular order

    @property
    def last_user_text(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn.text
        return ""


def build_conversation(
    req: wr.CountTokensRequest,
    caps: Capabilities,
    *,
    model: str,
    signer: Signer | None = None,
) -> Conversation:
    """Validate what pydantic cannot and produce the engine's conversation."""
    _refuse_unsupported(req, caps, model=model)
    _check_breakpoints(req)
    budget = _thinking_budget(req)
    marks = _Marks(caps.prompt_cache)
    context = _Context(caps, model, signer, marks)
    tools = tuple(_tool_spec(t, marks) for t in req.tools or ())
    system = _system_text(req.system, marks)
    turns: list[Turn] = []
    for i, message in enumerate(req.messages):
        last = i == len(req.messages) - 1
        # Top-level cache_control marks the last block of the request.
        auto = req.cache_control if last else None
        parts = _parts(message, context, path=f"messages.{i}", auto=auto)
        if not parts and not (last and message.role == "assistant"):
            raise InvalidRequestError(
                f"messages.{i}: all messages must have non-empty content except for "
                "the optional final assistant message"
            )
        if turns and turns[-1].role == message.role:
            turns[-1] = Turn(message.role, turns[-1].parts + parts)
        else:
            turns.append(Turn(message.role, parts))
    _check_tool_pairing(req.messages)

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
    )


def _refuse_unsupported(req: wr.CountTokensRequest, caps: Capabilities, *, model: str) -> None:
    for name in req.unsupported_fields():
        raise UnsupportedFeatureError(f"{name}: this parameter is not supported by parley yet")
    thinking = req.thinking
    if isinstance(thinking, wr.ThinkingEnabled):
        max_tokens = getattr(req, "max_tokens", None)
        if thinking.budget_tokens < 1024:
            raise InvalidRequestError(
                "thinking.budget_tokens: Input should be greater than or equal to 1024"
            )
        if max_tokens is not None and thinking.budget_tokens >= max_tokens:
            raise InvalidRequestError(
                "max_tokens: must be greater than thinking.budget_tokens "
                f"({max_tokens} <= {thinking.budget_tokens})"
            )
    if isinstance(thinking, wr.ThinkingEnabled | wr.ThinkingAdaptive):
        if isinstance(req.tool_choice, wr.ToolChoiceAny | wr.ToolChoiceTool):
            raise InvalidRequestError(
                "Thinking may not be enabled when tool_choice forces tool use."
            )
        if isinstance(req, wr.CreateMessageRequest):
            if req.temperature is not None and req.temperature != 1.0:
                raise InvalidRequestError(
                    "`temperature` may only be set to 1 when thinking is enabled."
                )
            if req.top_k is not None:
                raise InvalidRequestError("`top_k` may not be set when thinking is enabled.")
            if req.top_p is not None and req.top_p < 0.95:
                raise InvalidRequestError(
                    "`top_p` must be greater than or equal to 0.95 when thinking is enabled."
                )
    if req.output_config is not None and req.output_config.format is not None:
        raise UnsupportedFeatureError(
            "output_config.format: structured outputs are not supported by parley yet"
        )
    if req.tools and not caps.tools:
        raise UnsupportedFeatureError(f"tools: model '{model}' does not support tool use yet")


MAX_BREAKPOINTS = 4


def _check_breakpoints(req: wr.CountTokensRequest) -> None:
    """At most four ``cache_control`` breakpoints, the top-level one included."""
    blocks: list[Any] = list(req.tools or [])
    if isinstance(req.system, list):
        blocks.extend(req.system)
    for message in req.messages:
        if isinstance(message.content, list):
            blocks.extend(message.content)
    found = sum(1 for b in blocks if getattr(b, "cache_control", None) is not None)
    found += req.cache_control is not None
    if found > MAX_BREAKPOINTS:
        raise InvalidRequestError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {found}."
        )


# Budgets parley gives adaptive thinking, by output_config.effort.
EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 6144, "max": 8192}


def _thinking_budget(req: wr.CountTokensRequest) -> int | None:
    thinking = req.thinking
    if isinstance(thinking, wr.ThinkingEnabled):
        return thinking.budget_tokens
    if isinstance(thinking, wr.ThinkingAdaptive):
        effort = req.output_config.effort if req.output_config is not None else None
        budget = EFFORT_BUDGETS[effort or "medium"]
        max_tokens = getattr(req, "max_tokens", None)
        # Leave room for an answer within max_tokens.
        return min(budget, max(1, max_tokens // 2)) if max_tokens is not None else budget
    return None


@dataclass
class _Marks:
    """Hands out the tags of ``cache_control`` breakpoints (when the engine caches)."""

    enabled: bool
    nonce: str = ""  # drawn with the first tag
    found: list[CacheMark] = field(default_factory=list)

    def tag(self, control: Any) -> str:
        if control is None or not self.enabled:
            return ""
        # Private-use characters and a per-request nonce: no user text can forge one.
        self.nonce = self.nonce or secrets.token_hex(4)
        mark = CacheMark(f"\ue000{self.nonce}:{len(self.found)}\ue001", control.ttl or "5m")
        self.found.append(mark)
        return mark.tag

    def untag(self, text: str) -> str:
        """``text`` without any tag; its marks are dropped (a prefill is never cached)."""
        for mark in [m for m in self.found if m.tag in text]:
            text = text.replace(mark.tag, "")
            self.found.remove(mark)
        return text


@dataclass(frozen=True)
class _Context:
    caps: Capabilities
    model: str
    signer: Signer | None
    marks: _Marks


# Claude Code starts its system prompt with a per-request billing line whose
# ``cch=`` value changes every request; left as is, no two prompts share a
# prefix and no KV state can be reused. The value is dropped, the line kept.
_BILLING_CCH = re.compile(r"^(x-anthropic-billing-header:[^\n]*?)\s*cch=[^;\n]*;?", re.MULTILINE)


def normalize_billing_line(text: str) -> str:
    return _BILLING_CCH.sub(r"\1", text)


def _system_text(system: str | list[wc.TextBlock] | None, marks: _Marks) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return normalize_billing_line(system) or None
    texts = [normalize_billing_line(b.text) + marks.tag(b.cache_control) for b in system]
    return "\n\n".join(texts) or None


def _parts(message: wr.Message, ctx: _Context, *, path: str, auto: Any = None) -> tuple[Part, ...]:
    content = message.content
    if isinstance(content, str):
        return (TextPart(content + ctx.marks.tag(auto)),) if content else ()
    parts: list[Part] = []
    for j, block in enumerate(content):
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
        case wc.ImageBlock():
            raise UnsupportedFeatureError(f"{path}: model '{model}' does not support image input")
        case wc.DocumentBlock(source=source, title=title, context=context):
            return [TextPart(_document_text(source, title, context, path=path))]
        case wc.SearchResultBlock(title=title, source=source, content=blocks):
            body = "\n".join(b.text for b in blocks)
            return [TextPart(f"Search result: {title}\nSource: {source}\n{body}")]
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
                if isinstance(part, TextPart):
                    pieces.append(part.text)
        text = "\n".join(pieces)
    return ToolResultPart(block.tool_use_id, text, bool(block.is_error))


def _check_tool_pairing(messages: list[wr.Message]) -> None:
    """Each tool_use answered by a tool_result at the start of the next user turn, and
    each tool_result answering a tool_use of the previous assistant turn, as the API
    requires. Consecutive messages of one role count as one turn (they are merged);
    a trailing assistant turn has no next turn to check (it is a prefill). System
    messages are not turns of the conversation and are skipped."""
    groups: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            continue
        if groups and messages[groups[-1][0]].role == message.role:
            groups[-1].append(i)
        else:
            groups.append([i])
    for g, group in enumerate(groups):
        if messages[group[0]].role != "user":
            continue
        previous = groups[g - 1] if g > 0 else []
        calls = [
            (i, block.id)
            for i in previous
            for block in _blocks(messages[i])
            if isinstance(block, wc.ToolUseBlock)
        ]
        ids = {call_id for _, call_id in calls}
        leading: set[str] = set()
        in_lead = True
        for i in group:
            for m, block in enumerate(_blocks(messages[i])):
                if not isinstance(block, wc.ToolResultBlock):
                    in_lead = False
                    continue
                if block.tool_use_id not in ids:
                    raise InvalidRequestError(
                        f"messages.{i}.content.{m}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block.tool_use_id}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )
                if in_lead:
                    leading.add(block.tool_use_id)
        missing = [(i, call_id) for i, call_id in calls if call_id not in leading]
        if missing:
            raise InvalidRequestError(
                f"messages.{missing[0][0]}: `tool_use` ids were found without `tool_result` "
                f"blocks immediately after: {', '.join(c for _, c in missing)}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )


def _blocks(message: wr.Message) -> list[Any]:
    return [] if isinstance(message.content, str) else list(message.content)


def _tool_spec(tool: Any, marks: _Marks) -> ToolSpec:
    tag = marks.tag(getattr(tool, "cache_control", None))
    if isinstance(tool, wr.CustomTool):
        return ToolSpec(tool.name, (tool.description or "") + tag, tool.input_schema)
    description, schema = client_tool(tool.type, dict(tool.model_extra or {}))
    return ToolSpec(tool.name, description + tag, schema)

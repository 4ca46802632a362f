"""The model's output protocol: call syntaxes, the fallback prompt, the parser (thinking,
text, tool calls, stop hold-back), and the prompt it decodes from (``LlamaPrompt``);
the tool grammar is ``grammar.py``.

Two call syntaxes. Models whose chat template renders tools in the Hermes
style (Qwen 2.5/3, Hermes, many fine-tunes: the template mentions
``<tool_call>``) get their tools through the template and write::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Every other model gets the documented fallback: tools described in the
system prompt, calls written as::

    <tool_call name="get_weather">
    {"city": "Paris"}
    </tool_call>

(in both, several calls follow one another, separated by a newline). Once a call
starts, decoding is constrained by a llama.cpp grammar built from the tools'
JSON Schemas, so the name is one of the offered tools and the input is JSON
that matches its schema. ``auto`` uses a lazy grammar that wakes up at
``<tool_call``; ``any`` and ``tool`` constrain from the first token; ``none``
has no grammar and tells the model not to call. Length and item bounds of
any size, numeric bounds and common ``format``s are enforced (``grammar_json``
and the modules it names); what the grammar cannot express (``uniqueItems``,
some ``multipleOf``s, other ``format``s, patterns that are ambiguous or use
look-around: ``grammar_regex``) is left unconstrained: the JSON is still
valid, those keywords may not hold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from parley.conversation import Conversation, ToolSpec
from parley.engines.base import (
    EngineEvent,
    Prompt,
    TextChunk,
    ThinkingChunk,
    ToolCallStart,
    ToolInputChunk,
)
from parley.engines.llamacpp.prefix_cache import Breakpoint
from parley.engines.stops import StopMatcher
from parley.ids import tool_use_id

log = logging.getLogger("parley.engine.tools")


@dataclass(frozen=True)
class CallSyntax:
    """How a model writes a tool call: ``open NAME name_end INPUT close``.

    Consecutive calls are separated by ``separator``; ``trigger`` is the text
    that wakes a lazy grammar when the model decides to call on its own.
    """

    open: str
    name_end: str
    close: str
    trigger: str
    separator: str = "\n"


@dataclass(frozen=True)
class Grammar:
    """A decoding constraint in llama.cpp's GBNF, optionally woken by a trigger text.

    A lazy grammar's first line is ``root ::= "OPENING" lazy-rest``: the text it
    wakes at (``opening``, which begins with ``lazy_trigger``), then the rule of
    what follows, so an upstream with structural tags can take the two apart."""

    text: str
    root: str = "root"
    lazy_trigger: str | None = None  # None: constrain from the first token
    syntax: CallSyntax | None = None  # the tool-call syntax the grammar writes
    opening: str = ""  # a lazy grammar: the literal its root starts with
    # Once parley itself closes the reasoning section (its budget spent), the
    # constraint of the answer from its first token (a lazy grammar woken by the
    # close never sees the close parley writes).
    resume: Grammar | None = None


@dataclass(frozen=True)
class LlamaPrompt(Prompt):
    """A prompt as the llama.cpp engine decodes it."""

    grammar: Grammar | None = None
    breakpoints: tuple[Breakpoint, ...] = ()  # cache_control breakpoints as token positions


# The reasoning section parley opens for models without a reasoning mode of
# their own; the model closes it, or parley does at the budget.
THINK_OPEN = "<think>\n"
THINK_CLOSE = "</think>"
THINK_FORCED_CLOSE = "\n</think>\n\n"

FALLBACK = CallSyntax(
    open='<tool_call name="', name_end='">\n', close="\n</tool_call>", trigger="<tool_call"
)
HERMES = CallSyntax(
    open='<tool_call>\n{"name": "',
    name_end='", "arguments": ',
    close="}\n</tool_call>",
    trigger="<tool_call>",
)


def system_section(conv: Conversation) -> str:
    """The text appended to the system prompt when tools are offered."""
    lines = [
        "You can call tools. To call a tool, reply with a block exactly like this, "
        "holding only the tool's JSON input:",
        f"{FALLBACK.open}TOOL_NAME{FALLBACK.name_end}" + '{"argument": "value"}' + FALLBACK.close,
        "Tool results come back in <tool_result> blocks.",
    ]
    if conv.tool_choice == "none":
        lines.append("Do not call any tool in this reply: answer in plain text.")
    elif conv.tool_choice == "tool":
        lines.append(f"Call the tool {conv.tool_name} now.")
    elif conv.tool_choice == "any":
        lines.append("Call one of the tools now.")
    if conv.disable_parallel_tool_use:
        lines.append("Call at most one tool.")
    lines.append("\nAvailable tools:")
    for tool in conv.tools:
        lines.append(f"\n## {tool.name}\n{tool.description}".rstrip())
        lines.append("Input schema: " + json.dumps(tool.input_schema, ensure_ascii=False))
    return "\n".join(lines)


@dataclass
class ToolCallParser:
    """Splits decoded text into text, tool-call starts and streamed tool input.

    A call that repeats an earlier call of the same message exactly is never
    shown: while its input is still a prefix of an earlier one it is held
    back, and if it completes identical the message ends there
    (``duplicate`` is set). Small models loop on parallel calls otherwise.
    """

    tools: tuple[ToolSpec, ...]
    stops: tuple[str, ...] = ()
    syntax: CallSyntax | None = None  # None: no tool calls to watch for
    thinking: bool = False  # the output opens inside a reasoning section
    state: str = "text"
    calls: int = 0
    stop_hit: str | None = None
    duplicate: bool = False
    _matcher: StopMatcher = field(init=False)
    _name: str = ""
    _input: list[str] = field(default_factory=list)
    _started: bool = False
    _sent: int = 0
    _done: list[tuple[str, str]] = field(default_factory=list)

    _strip_lead: bool = False

    def __post_init__(self) -> None:
        self._syntax = self.syntax or FALLBACK
        if self.thinking:
            self.state = "thinking"
            self._matcher = StopMatcher((THINK_CLOSE,))
        else:
            self._matcher = self._text_matcher()

    def _text_matcher(self) -> StopMatcher:
        markers = (self._syntax.open,) if self.syntax else ()
        return StopMatcher((*markers, *self.stops))

    def end_thinking(self) -> list[EngineEvent]:
        """Leave the reasoning section (the model closed it, or parley did)."""
        if self.state != "thinking":
            return []
        rest = self._matcher.flush()
        self.state = "text"
        self._matcher = self._text_matcher()
        self._strip_lead = True
        return [ThinkingChunk(rest)] if rest else []

    def feed(self, text: str) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        while text and not self.duplicate:
            if self.state == "thinking":
                safe, hit = self._matcher.feed(text)
                text = ""
                if safe:
                    out.append(ThinkingChunk(safe))
                if hit is not None:
                    text = self._matcher.flush()
                    self.state = "text"
                    self._matcher = self._text_matcher()
                    self._strip_lead = True
                continue
            if self._strip_lead and self.state == "text":
                text = text.lstrip()
                if not text:
                    return out
                self._strip_lead = False
            if self.state == "text":
                safe, hit = self._matcher.feed(text)
                text = ""
                if safe:
                    out.append(TextChunk(safe))
                if hit == self._syntax.open:
                    text = self._matcher.flush()
                    self._enter_name()
                elif hit is not None:
                    self.stop_hit = hit
                    return out
            elif self.state == "name":
                joined = self._name + text
                end = self._syntax.name_end
                at = joined.find(end)
                if at < 0:
                    self._name = joined
                    return out
                self._name, text = joined[:at], joined[at + len(end) :]
                self._matcher = StopMatcher((self._syntax.close,))
                self.state = "input"
                out.extend(self._release())
            elif self.state == "input":
                safe, hit = self._matcher.feed(text)
                text = ""
                self._input.append(safe)
                out.extend(self._release())
                if hit is not None:
                    text = self._matcher.flush()  # what follows the close marker
                    out.extend(self._complete())
            else:  # between calls: the grammar allows only another call or the end
                _, hit = self._matcher.feed(text)
                text = ""
                if hit is not None:
                    text = self._matcher.flush()
                    self._enter_name()
        return out

    def _echoes_earlier(self, raw: str, *, complete: bool) -> bool:
        return any(
            name == self._name and (prior == raw if complete else prior.startswith(raw))
            for name, prior in self._done
        )

    def _release(self) -> list[EngineEvent]:
        """Send what is known of the current call, unless it may still be a repeat."""
        raw = "".join(self._input)
        if not self._started and self._echoes_earlier(raw, complete=False):
            return []
        out: list[EngineEvent] = []
        if not self._started:
            self._started = True
            out.append(ToolCallStart(tool_use_id(), self._name))
        if len(raw) > self._sent:
            out.append(ToolInputChunk(raw[self._sent :]))
            self._sent = len(raw)
        return out

    def _complete(self) -> list[EngineEvent]:
        raw = "".join(self._input)
        if not self._started and self._echoes_earlier(raw, complete=True):
            self.duplicate = True
            return []
        out = self._release()
        self._done.append((self._name, raw))
        self.calls += 1
        self._matcher = StopMatcher((self._syntax.open,))
        self.state = "between"
        return out

    def _enter_name(self) -> None:
        self.state = "name"
        self._name = ""
        self._input = []
        self._started = False
        self._sent = 0

    def flush(self) -> list[EngineEvent]:
        """At the end of a message: what was held back and is still owed."""
        if self.state == "thinking":
            return self.end_thinking()
        if self.state == "text":
            rest = self._matcher.flush()
            return [TextChunk(rest)] if rest else []
        if self.state == "input" and not self.duplicate:
            # A cut-off call still held as a possible repeat stays unsent.
            self._input.append(self._matcher.flush())
            return self._release()
        return []

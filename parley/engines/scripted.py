"""The scripted engine: deterministic answers from rules, no model.

For parley's own tests and for users who need a stand-in for Claude in their
CI. Rules come from a YAML or JSON file::

    rules:
      - match: {user: "weather in (\\w+)", regex: true, tools: [get_weather]}
        reply:
          text: "Let me look that up."
          tool_use: [{name: get_weather, input: {city: Paris}}]
      - match: {system: "pirate"}
        reply: {text: "Arr!", stop_reason: end_turn, usage: {output_tokens: 7}}
    delay: 0.0          # seconds between streamed chunks
    slots: 4            # requests decoded at once; the rest wait
    max_queue: 64       # waiting requests beyond this get 529

``reply: {thinking: ...}`` is the thinking block when the request enables
thinking. ``reply: {text: ..., error: "..."}`` streams the text, then fails with a 500
``api_error`` (an ``event: error`` once a stream has begun), for testing
clients' error paths. ``reply: {crash: true}`` kills the server process
(SIGKILL) when the rule answers, as a segfault in a native engine would, for
testing crash recovery; only whoever writes the rules file can set it.

``reply: {hold: PATH, hold_after: N}`` holds the reply before its token N + 1
(``hold_after`` defaults to 0: before the first) until a file exists at
``PATH`` (relative to the rules file's directory): a test holds generations
in their slots, observes them (``held`` in the engine's ``/parley/stats``
counts the generations waiting at a gate) and releases them by creating the
file, instead of waiting out a ``delay``. Every request the rule answers
waits at the same gate; once the file exists they all go on. A reply with at
most N tokens is not held. A held generation can still be cancelled.

``match`` keys (all optional, all must hold): ``user`` (last user text),
``system``, ``tool_result`` (the last tool result's text, when the request
ends with tool results: the step of an agent loop), ``tools`` (names that
must all be offered); exact unless
``regex: true`` (then ``re.search``). The first matching rule answers; with
none the last user text is echoed. Text streams word by word; tool inputs in
several ``input_json_delta`` chunks. ``max_tokens`` and ``stop_sequences``
apply as with a real model. Tokens are whitespace-led words, so counts are
exact and reproducible.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from parley.conversation import Capabilities, Conversation, TextPart, ToolCallPart, ToolResultPart
from parley.engines import admission
from parley.engines.base import (
    Engine,
    EngineEvent,
    Finished,
    FinishReason,
    Generation,
    ModelCard,
    Prompt,
    SamplingParams,
    TextChunk,
    ThinkingChunk,
    ToolCallStart,
    ToolInputChunk,
)
from parley.engines.stops import StopMatcher
from parley.errors import EngineError, ParleyError, PromptTooLongError
from parley.ids import tool_use_id

if TYPE_CHECKING:
    from parley.config import Settings

_TOKEN = re.compile(r"\s*\S+|\s+")


class ScriptError(ParleyError):
    """Start-up error: the rules file cannot be read."""


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class Rule:
    match: dict[str, Any]
    reply: dict[str, Any]

    def matches(self, conv: Conversation) -> bool:
        regex = bool(self.match.get("regex", False))
        checks = (
            ("user", conv.last_user_text),
            ("system", conv.system or ""),
            ("tool_result", _last_tool_result(conv)),
        )
        for key, actual in checks:
            want = self.match.get(key)
            if want is None:
                continue
            if regex:
                if not re.search(str(want), actual):
                    return False
            elif str(want) != actual:
                return False
        offered = {t.name for t in conv.tools}
        return all(name in offered for name in self.match.get("tools", []))


def _last_tool_result(conv: Conversation) -> str:
    """The text of the last tool result, when the conversation ends with results."""
    if conv.turns and conv.turns[-1].role == "user":
        results = [p for p in conv.turns[-1].parts if isinstance(p, ToolResultPart)]
        if results:
            return results[-1].text
    return ""


GATE_POLL = 0.01  # seconds between looks at a held reply's gate file


@dataclass(frozen=True)
class Script:
    rules: tuple[Rule, ...] = ()
    delay: float = 0.0
    slots: int = 4
    max_queue: int = 64
    base: Path = Path()  # the rules file's directory: relative gate paths start there

    @classmethod
    def load(cls, path: Path | None) -> Script:
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ScriptError(f"cannot read scripted rules from {path}: {exc}") from exc
        rules = tuple(
            Rule(dict(r.get("match") or {}), dict(r.get("reply") or {}))
            for r in data.get("rules", [])
        )
        return cls(
            rules=rules,
            delay=float(data.get("delay", 0.0)),
            slots=int(data.get("slots", 4)),
            max_queue=int(data.get("max_queue", 64)),
            base=path.parent,
        )

    def reply_for(self, conv: Conversation) -> dict[str, Any]:
        for rule in self.rules:
            if rule.matches(conv):
                return rule.reply
        return {"text": conv.last_user_text}


def render(conv: Conversation) -> str:
    lines = [f"[system]\n{conv.system}"] if conv.system else []
    for tool in conv.tools:
        lines.append(f"[tool {tool.name}]\n{tool.description}\n{json.dumps(tool.input_schema)}")
    for turn in conv.turns:
        for part in turn.parts:
            if isinstance(part, TextPart):
                lines.append(f"[{turn.role}]\n{part.text}")
            elif isinstance(part, ToolCallPart):
                lines.append(f"[tool_use {part.name}]\n{json.dumps(part.input)}")
            elif isinstance(part, ToolResultPart):
                lines.append(f"[tool_result {part.tool_use_id}]\n{part.text}")
    lines.append(f"[assistant]\n{conv.prefill}")
    return "\n".join(lines)


class _ScriptedGeneration(Generation):
    def __init__(self, engine: ScriptedEngine, prompt: Prompt, params: SamplingParams) -> None:
        self._engine = engine
        self._prompt = prompt
        self._params = params
        self._cancelled = False
        self._queued = True
        self._gate_passed = False

    def _leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self._engine._waiting -= 1

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._engine.cancelled += 1
        self._leave_queue()

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._run()

    async def _run(self) -> AsyncIterator[EngineEvent]:
        engine = self._engine
        finished = False
        try:
            try:
                await asyncio.wait_for(engine._slots.acquire(), engine.queue_timeout)
            except TimeoutError:
                raise admission.waited_too_long(engine.queue_timeout) from None
            try:
                self._leave_queue()
                engine._running += 1
                try:
                    async for event in self._answer():
                        if self._cancelled:
                            return
                        finished = isinstance(event, Finished)
                        yield event
                finally:
                    engine._running -= 1
            finally:
                engine._slots.release()
        finally:
            if not finished:
                self.cancel()

    async def _pace(self, produced: int, reply: dict[str, Any], *, delay: bool = True) -> None:
        """Before the reply's next token: its gate once ``hold_after`` tokens are out,
        then the script's delay."""
        due = "hold" in reply and produced >= int(reply.get("hold_after", 0))
        if due and not self._gate_passed:
            self._gate_passed = True
            await self._engine.hold(self._engine.script.base / str(reply["hold"]), self)
        if delay and self._engine.script.delay:
            await asyncio.sleep(self._engine.script.delay)

    async def _answer(self) -> AsyncIterator[EngineEvent]:
        script = self._engine.script
        reply = script.reply_for(self._prompt.conversation)
        if reply.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        params = self._params
        produced = 0
        stops = StopMatcher(params.stop_sequences)
        if self._prompt.conversation.thinking_budget is not None:
            thought = str(reply.get("thinking", "The scripted engine does not think."))
            for word in tokenize(thought)[: self._prompt.conversation.thinking_budget]:
                await self._pace(produced, reply, delay=False)
                produced += 1
                yield ThinkingChunk(word)
        for word in tokenize(str(reply.get("text", ""))):
            if produced >= params.max_tokens:
                yield TextChunk(stops.flush())
                yield Finished("max_tokens", produced)
                return
            await self._pace(produced, reply)
            produced += 1
            text, matched = stops.feed(word)
            if text:
                yield TextChunk(text)
            if matched is not None:
                yield Finished("stop_sequence", produced, matched)
                return
        yield TextChunk(stops.flush())
        if "error" in reply:
            raise EngineError(str(reply["error"]))
        calls = list(reply.get("tool_use") or [])
        for call in calls:
            if produced >= params.max_tokens:
                yield Finished("max_tokens", produced)
                return
            yield ToolCallStart(str(call.get("id") or tool_use_id()), str(call["name"]))
            payload = json.dumps(call.get("input") or {}, ensure_ascii=False)
            for piece in _chunks(payload, 8):
                await self._pace(produced, reply)
                produced += 1
                yield ToolInputChunk(piece)
        default_reason: FinishReason = "tool_use" if calls else "end_turn"
        reason: FinishReason = reply.get("stop_reason", default_reason)
        usage = reply.get("usage") or {}
        yield Finished(reason, int(usage.get("output_tokens", produced)))


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ScriptedEngine(Engine):
    prepare_off_loop = False  # a regex or two: no model, no tokenizer

    def __init__(
        self,
        script: Script,
        *,
        model_id: str = "scripted",
        context_length: int = 200_000,
        queue_timeout: float = 300.0,
    ):
        self.script = script
        self.queue_timeout = queue_timeout  # seconds a request may wait for a slot
        self._slots = asyncio.Semaphore(script.slots)
        self._waiting = 0
        self._running = 0
        self._held = 0
        self.cancelled = 0
        self.card = ModelCard(
            id=model_id,
            display_name="Scripted engine (deterministic rules)",
            created_at="2026-01-01T00:00:00Z",
            context_length=context_length,
            max_output_tokens=64_000,
            capabilities=Capabilities(images=False, tools=True),
        )

    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> Prompt:
        text = render(conversation)
        # Every token has a character, so a shorter text cannot reach the limit;
        # a longer one is counted only until it does.
        if limit is not None and len(text) >= limit:
            for counted, _ in enumerate(_TOKEN.finditer(text), 1):
                if counted >= limit:
                    raise PromptTooLongError(
                        counted, context=self.card.context_length, model=self.card.id, exact=False
                    )
        pieces = tokenize(text)
        return Prompt(conversation, "".join(pieces), list(range(len(pieces))))

    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        # Requests not yet holding a slot may still find one free: count all of them.
        if self._waiting + self._running >= self.script.slots + self.script.max_queue:
            raise admission.queue_full()
        self._waiting += 1
        return _ScriptedGeneration(self, prompt, params)

    async def hold(self, gate: Path, generation: _ScriptedGeneration) -> None:
        """Wait (in the generation's slot) until the file ``gate`` exists."""
        self._held += 1
        try:
            # A file has no event to await: look again every GATE_POLL s (one stat).
            while not gate.exists() and not generation.cancelled:  # noqa: ASYNC110, ASYNC240
                await asyncio.sleep(GATE_POLL)
        finally:
            self._held -= 1

    def stats(self) -> dict[str, Any]:
        return {
            "waiting": self._waiting,
            "running": self._running,
            "held": self._held,
            "cancelled": self.cancelled,
        }


@dataclass(frozen=True)
class ScriptedOptions:
    """The scripted engine's options (``[engines.scripted]``, ``--engine-opt``);
    defaults from the flat settings ``--script``, ``--model-name``, ``--queue-timeout``."""

    script: str | None = None
    model_name: str | None = None
    queue_timeout: float = 300.0
    context_length: int = 200_000


def from_settings(settings: Settings) -> ScriptedEngine:
    from parley.engines.options import engine_options

    base = {
        "script": settings.script,
        "model_name": settings.model_name,
        "queue_timeout": settings.queue_timeout,
    }
    o = engine_options(settings, "scripted", ScriptedOptions, base)
    script = Script.load(Path(o.script).expanduser() if o.script else None)
    return ScriptedEngine(
        script,
        model_id=o.model_name or "scripted",
        queue_timeout=o.queue_timeout,
        context_length=o.context_length,
    )

"""A streamed chat completion read back as parley's engine events.

``Reply.feed`` takes one ``chat.completion.chunk`` and returns the events it
carries: content deltas as ``TextChunk`` (through parley's stop matcher when
the upstream does not say which stop matched), ``reasoning`` /
``reasoning_content`` deltas as ``ThinkingChunk``, tool-call deltas as
``ToolCallStart`` + ``ToolInputChunk``. ``done`` is set when parley itself
ends the answer (a stop sequence matched, a second call when one was
allowed): the engine then closes the upstream request. ``end`` gives the
last events and the ``Finished``, with the final usage and cache figures;
every tool call's input is checked against its schema first, and one that
does not validate fails the request rather than reach the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from parley.conversation import Conversation
from parley.engines.base import (
    CacheUsage,
    EngineEvent,
    Finished,
    FinishReason,
    SamplingParams,
    TextChunk,
    ThinkingChunk,
    ToolCallStart,
    ToolInputChunk,
    out_of_budget,
)
from parley.engines.openai_chat.dialects import Dialect
from parley.engines.stops import StopMatcher
from parley.errors import EngineError
from parley.ids import tool_use_id


@dataclass
class _Call:
    name: str = ""
    id: str = ""  # parley's, given when the name is known (the call starts)
    arguments: list[str] = field(default_factory=list)


def _complete(arguments: str) -> bool:
    """Whether a call's streamed input is a whole JSON object (nothing can follow one)."""
    if not arguments.rstrip().endswith("}"):
        return False
    try:
        return isinstance(json.loads(arguments), dict)
    except json.JSONDecodeError:
        return False


class Reply:
    def __init__(
        self, conversation: Conversation, params: SamplingParams, dialect: Dialect, *, url: str
    ) -> None:
        self._conversation = conversation
        self._params = params
        self._dialect = dialect
        self._url = url
        self._schemas = {t.name: t.input_schema for t in conversation.tools}
        # Stops the upstream is not told about (it would not say which one matched).
        stops = () if dialect.stop_field is not None else params.stop_sequences
        self._stops = StopMatcher(stops)
        self._thinking = conversation.thinking_budget is not None
        self._calls: dict[int, _Call] = {}
        self._pieces = 0  # deltas received: the token count when no usage arrives
        self._finish_reason: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] | None = None
        self._answer: list[str] = []  # the text, kept when it must follow a format
        self.done: Finished | None = None

    def feed(self, chunk: dict[str, Any]) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0 or self.done is not None:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                self._pieces += 1
                # A model that thinks unasked: counted, not shown (the API gives no
                # thinking block without ``thinking``).
                if self._thinking:
                    out.append(ThinkingChunk(reasoning))
            content = delta.get("content")
            if content:
                self._pieces += 1
                text, hit = self._stops.feed(content)
                if text:
                    out.append(TextChunk(text))
                    if self._conversation.answer_schema is not None:
                        self._answer.append(text)
                if hit is not None:
                    self.done = Finished("stop_sequence", self._produced(), hit, self._cache())
                    return out
            for call in delta.get("tool_calls") or []:
                out.extend(self._call_delta(call))
                if self.done is not None:
                    return out
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                if self._dialect.stop_field is not None:
                    self._matched = choice.get(self._dialect.stop_field)
        return out

    def _call_delta(self, delta: dict[str, Any]) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        index = int(delta.get("index") or 0)
        function = delta.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            if self._calls and self._conversation.disable_parallel_tool_use:
                self._check_calls()
                self.done = Finished("tool_use", self._produced(), None, self._cache())
                return out
            call = self._calls[index] = _Call()
        self._pieces += 1
        if not call.id and (function.get("name") or call.name):
            call.name = call.name or str(function["name"])
            call.id = tool_use_id()
            held = self._stops.flush()
            if held:
                out.append(TextChunk(held))
            out.append(ToolCallStart(call.id, call.name))
            out.extend(ToolInputChunk(piece) for piece in call.arguments)
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object whole
            arguments = json.dumps(arguments, ensure_ascii=False)
        if arguments:
            call.arguments.append(arguments)
            if call.id:
                out.append(ToolInputChunk(arguments))
            if self._conversation.disable_parallel_tool_use and _complete("".join(call.arguments)):
                # The one call allowed is written: no need to let the upstream go on.
                self._check_calls()
                self.done = Finished("tool_use", self._produced(), None, self._cache())
        return out

    def end(self) -> list[EngineEvent]:
        """The last events of an answer whose stream ended, ``Finished`` last."""
        if self.done is not None:
            return [self.done]
        out: list[EngineEvent] = []
        held = self._stops.flush()
        if held:
            out.append(TextChunk(held))
        reason = self._finish_reason
        produced = self._produced()
        stop: FinishReason
        sequence: str | None = None
        if reason == "length":
            self._check_calls(but_last=True)  # the last may be cut off mid-input
            stop = out_of_budget(produced, self._params.max_tokens)
        elif reason in ("stop", "tool_calls", "function_call") and self._calls:
            self._check_calls()
            stop = "tool_use"
        elif reason == "stop":
            if self._conversation.tools and self._conversation.tool_choice in ("any", "tool"):
                raise EngineError(
                    f"the upstream {self._url} ended its answer without the tool call "
                    "tool_choice requires"
                )
            matched = self._matched
            if isinstance(matched, str) and matched in self._params.stop_sequences:
                stop, sequence = "stop_sequence", matched
            else:
                stop = "end_turn"
                self._check_answer(held)
        elif reason is None:
            raise EngineError(f"the upstream {self._url} ended its stream without a finish_reason")
        else:
            raise EngineError(f"the upstream {self._url} ended its answer with '{reason}'")
        out.append(Finished(stop, produced, sequence, self._cache()))
        return out

    def _check_answer(self, held: str) -> None:
        """A whole answer under ``output_config.format`` parses and validates."""
        schema = self._conversation.answer_schema
        if schema is None:
            return
        raw = "".join(self._answer) + held
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EngineError(
                f"the upstream {self._url} gave an answer that is not JSON: {exc}"
            ) from exc
        error = _schema_error(schema, value)
        if error is not None:
            raise EngineError(
                f"the upstream {self._url} gave an answer that does not follow "
                f"output_config.format: {error}"
            )

    def _check_calls(self, *, but_last: bool = False) -> None:
        """Every call names an offered tool and its input validates against the schema."""
        calls = list(self._calls.values())
        for call in calls[:-1] if but_last else calls:
            if call.name not in self._schemas:
                raise EngineError(
                    f"the upstream {self._url} called '{call.name}', which is not an offered tool"
                )
            raw = "".join(call.arguments)
            try:
                value = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise EngineError(
                    f"the upstream {self._url} gave '{call.name}' input that is not JSON: {exc}"
                ) from exc
            error = _schema_error(self._schemas[call.name], value)
            if not isinstance(value, dict):
                raise EngineError(
                    f"the upstream {self._url} gave '{call.name}' input that is not an object"
                )
            if error is not None:
                raise EngineError(
                    f"the upstream {self._url} gave '{call.name}' input that does not follow its "
                    f"input_schema: {error}"
                )

    def _produced(self) -> int:
        if self._usage is not None and isinstance(self._usage.get("completion_tokens"), int):
            return int(self._usage["completion_tokens"])
        return self._pieces

    @property
    def prompt_tokens(self) -> int | None:
        value = (self._usage or {}).get("prompt_tokens")
        return value if isinstance(value, int) else None

    def _cache(self) -> CacheUsage | None:
        """The upstream's prefix-cache figures (only in the final usage chunk)."""
        if self._usage is None:
            return None
        details = self._usage.get("prompt_tokens_details") or {}
        read = details.get("cached_tokens") or 0
        created = details.get("created_cache_tokens") or self._usage.get("created_cache_tokens")
        return CacheUsage(read=int(read), created_5m=int(created or 0))


def _schema_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not validate against ``schema`` (formats checked), or None."""
    try:
        validator = jsonschema.validators.validator_for(schema)(
            schema, format_checker=jsonschema.FormatChecker()
        )
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except jsonschema.exceptions.SchemaError:
        return None  # a schema jsonschema cannot read: nothing more to check
    if error is None:
        return None
    return f"{error.message} (at /{'/'.join(map(str, error.path))})"

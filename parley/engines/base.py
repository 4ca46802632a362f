"""The engine interface: what parley asks of any inference backend.

An engine serves one model. It renders a ``Conversation`` into a ``Prompt``
(exactly the tokens it will decode from, so counting is exact), and runs
generations that yield ``EngineEvent`` values. Everything Anthropic-shaped
(blocks, indices, SSE) happens above it, in ``parley.streaming``.

Obligations of an implementation:

* ``prepare`` is synchronous and thread-safe; callers run it off the event loop.
* ``submit`` never blocks: it admits the request or raises ``OverloadedError``.
* A ``Generation`` yields events ending with exactly one ``Finished``;
  ``cancel()`` (or leaving the iteration early) frees the engine promptly.
* Foreign exceptions are translated into ``parley.errors`` at this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from parley.conversation import Capabilities, Conversation


@dataclass(frozen=True)
class ModelCard:
    """What the API says about a served model (``/v1/models``, limits)."""

    id: str
    display_name: str
    created_at: str
    context_length: int
    max_output_tokens: int
    capabilities: Capabilities


@dataclass(frozen=True)
class Grammar:
    """A decoding constraint in llama.cpp's GBNF, optionally woken by a trigger text."""

    text: str
    root: str = "root"
    lazy_trigger: str | None = None  # None: constrain from the first token


@dataclass(frozen=True)
class Prompt:
    conversation: Conversation
    text: str
    tokens: Sequence[int]
    grammar: Grammar | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    priority: int = 0  # lower runs first: interactive 0, batch work later


# --- events an engine yields ------------------------------------------------


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    id: str
    name: str


@dataclass(frozen=True)
class ToolInputChunk:
    partial_json: str


FinishReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"
]


@dataclass(frozen=True)
class Finished:
    stop_reason: FinishReason
    output_tokens: int
    stop_sequence: str | None = None


EngineEvent = TextChunk | ToolCallStart | ToolInputChunk | Finished


class Generation(abc.ABC):
    """One admitted request: iterate for events, ``cancel`` to give up."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[EngineEvent]: ...

    @abc.abstractmethod
    def cancel(self) -> None: ...


class Engine(abc.ABC):
    """A backend serving one model."""

    card: ModelCard

    async def start(self) -> None:
        """Load the model; called once from the app's lifespan. Default: nothing to load."""
        return None

    async def close(self) -> None:
        """Stop work and free resources; called once on shutdown. Default: nothing held."""
        return None

    @abc.abstractmethod
    def prepare(self, conversation: Conversation) -> Prompt:
        """Render and tokenize exactly what ``submit`` would decode from."""

    @abc.abstractmethod
    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        """Admit a generation or raise ``OverloadedError``; never blocks."""

    def stats(self) -> dict[str, Any]:
        """Counters for health and tests (queued, running, finished...)."""
        return {}

"""The engine interface: what parley asks of any inference backend.

An engine serves one model. It renders a ``Conversation`` into a ``Prompt``
(exactly the tokens it will decode from, so counting is exact), and runs
generations that yield ``EngineEvent`` values. Everything Anthropic-shaped
(blocks, indices, SSE) happens above it, in ``parley.streaming``.

Obligations of an implementation:

* ``prepare`` is synchronous and thread-safe; callers run it off the event loop.
  Given a ``limit``, it may raise ``PromptTooLongError(n, ..., exact=False)`` instead
  of tokenizing a prompt it can *prove* has ``n >= limit`` tokens (a cheap
  check, so a huge prompt is not tokenized only to be refused); it must never
  do so for a prompt with fewer. Ignoring ``limit`` is always correct.
* ``submit`` never blocks: it admits the request or raises ``OverloadedError``.
* A ``Generation`` yields events ending with exactly one ``Finished``;
  ``cancel()`` (or leaving the iteration early) frees the engine promptly.
* Foreign exceptions are translated into ``parley.errors`` at this boundary.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
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
class CacheUsage:
    read: int = 0
    created_5m: int = 0
    created_1h: int = 0

    @property
    def created(self) -> int:
        return self.created_5m + self.created_1h


@dataclass(frozen=True)
class Prompt:
    """What ``prepare`` made of a conversation: exactly the tokens ``submit``
    decodes from. Engines subclass it for what only they read (llama.cpp: the
    tool grammar, cache breakpoints); above the engine only ``n_tokens`` is."""

    conversation: Conversation
    text: str
    tokens: Sequence[int]

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
    tenant: str = ""  # the API key's scope (a hash of it; "" without keys): caches it may not share


# --- events an engine yields ------------------------------------------------


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ThinkingChunk:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    id: str
    name: str


@dataclass(frozen=True)
class ToolInputChunk:
    partial_json: str


FinishReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "model_context_window_exceeded",
    "compaction",  # not an engine's: a compaction that pauses (parley.compaction)
]


def out_of_budget(produced: int, max_tokens: int) -> FinishReason:
    """Why an answer that used its whole budget ended: ``max_tokens`` when the
    request's own limit was reached, else the context window's end."""
    return "max_tokens" if produced >= max_tokens else "model_context_window_exceeded"


@dataclass(frozen=True)
class Finished:
    stop_reason: FinishReason
    output_tokens: int
    stop_sequence: str | None = None
    # The prompt-cache figures when the engine learns them only at the end (an
    # upstream's report); they replace the ones given at admission.
    cache: CacheUsage | None = None


@dataclass(frozen=True)
class Compacted:
    """Not an engine's event: ``parley.compaction`` yields it between the
    summarising generation and the answer's. The summary (None when it came out
    empty) and its signature, the summarising generation's figures, and the
    answer's prompt (None when the response pauses after the summary)."""

    content: str | None
    signature: str | None
    input_tokens: int  # the summarising prompt, cache reads and writes included
    output_tokens: int
    cache: CacheUsage = CacheUsage()
    answer_tokens: int | None = None
    answer_cache: CacheUsage = CacheUsage()


EngineEvent = TextChunk | ThinkingChunk | ToolCallStart | ToolInputChunk | Finished | Compacted


class Generation(abc.ABC):
    """One admitted request: iterate for events, ``cancel`` to give up."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[EngineEvent]: ...

    @abc.abstractmethod
    def cancel(self) -> None: ...

    @property
    def cache_usage(self) -> CacheUsage:
        """Prompt tokens read from and written to the prompt cache (known at admission)."""
        return CacheUsage()

    async def started(self) -> None:
        """Returns once the work is under way where it runs, raising what ends it
        before then (an upstream that refuses it). Nothing has reached the
        client until this returns, so such an error is still an HTTP status.
        An engine that admits work at ``submit`` has nothing to wait for."""
        return None

    async def heartbeat(self, interval: float) -> AsyncIterator[EngineEvent | None]:
        """The events, with ``None`` whenever ``interval`` seconds pass without one.

        This default moves events through a queue with one pump task; engines
        with a queue of their own override it to skip the extra hop.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self:
                    queue.put_nowait(event)
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(_END)

        task = asyncio.create_task(pump())
        try:
            while True:
                item = await next_or_tick(queue, loop, interval)
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


_END = object()


class EndOfStream:
    """The last item an engine puts in a ``QueuedGeneration``'s queue."""


END = EndOfStream()


class QueuedGeneration(Generation):
    """A generation whose events an engine puts in an asyncio queue: ``END``
    after the last, an exception to raise in the reader. A reader that leaves
    before ``Finished`` cancels the generation. Subclasses give the queue and
    ``cancel``."""

    _done = False

    @property
    @abc.abstractmethod
    def _queue(self) -> asyncio.Queue[Any]: ...

    async def _stream(self, interval: float) -> AsyncIterator[EngineEvent | None]:
        """Events until the end; ``None`` after ``interval`` s without one."""
        loop = asyncio.get_running_loop()
        try:
            while not self._done:
                item = await next_or_tick(self._queue, loop, interval)
                if item is None:
                    yield None
                    continue
                if isinstance(item, EndOfStream):  # ended without a Finished: cancelled
                    self._done = True
                    return
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                if isinstance(item, Finished):
                    self._done = True
                yield item
        finally:
            if not self._done:
                self.cancel()

    async def _events(self) -> AsyncIterator[EngineEvent]:
        async for item in self._stream(math.inf):
            if item is not None:
                yield item

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._events()

    def heartbeat(self, interval: float) -> AsyncIterator[EngineEvent | None]:
        return self._stream(interval)


TICK = object()
"""Put in a queue by the heartbeat timer; read back as ``None`` (no event yet)."""


async def next_or_tick(
    queue: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop, interval: float
) -> Any:
    """The next queued item, or ``None`` if ``interval`` seconds pass first."""
    if not queue.empty():
        item = queue.get_nowait()
    elif interval == math.inf:
        item = await queue.get()
    else:
        timer = loop.call_later(interval, queue.put_nowait, TICK)
        item = await queue.get()
        timer.cancel()
    return None if item is TICK else item


class Engine(abc.ABC):
    """A backend serving one model."""

    card: ModelCard
    prepare_off_loop: bool = True  # False when prepare is cheap enough for the event loop

    async def start(self) -> None:
        """Load the model; called once from the app's lifespan. Default: nothing to load."""
        return None

    async def close(self) -> None:
        """Stop work and free resources; called once on shutdown. Default: nothing held."""
        return None

    @abc.abstractmethod
    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> Prompt:
        """Render and tokenize exactly what ``submit`` would decode from (or, with
        ``limit``, refuse a prompt proven to have that many tokens: see above)."""

    @abc.abstractmethod
    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        """Admit a generation or raise ``OverloadedError``; never blocks."""

    @property
    def broken(self) -> str | None:
        """None while the engine can serve; otherwise why it cannot (its worker
        died): health checks then answer 503. Default: always serving."""
        return None

    def stats(self) -> dict[str, Any]:
        """Counters for health and tests (queued, running, finished...)."""
        return {}

"""A generation made by a task on the event loop (every upstream engine's).

An upstream sends a chunk per token, and on a small machine each event the
client gets costs about a millisecond of CPU taken from the upstream's own
threads (bench/RESULTS.md, "Observations"). So, as the embedded engine does
with ``--stream-interval-ms``, consecutive text (thinking, tool input) is
merged into one event per ``interval``: the first goes out at once, what
follows within the interval waits for a timer (never for the next chunk, so
a stalling upstream holds nothing back), and any other event sends what was
waiting first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from parley.engines.base import (
    END,
    EngineEvent,
    QueuedGeneration,
    TextChunk,
    ThinkingChunk,
    ToolInputChunk,
)

Emit = Callable[[EngineEvent], None]
Mergeable = TextChunk | ThinkingChunk | ToolInputChunk


def merged(first: Mergeable, then: Mergeable) -> Mergeable:
    match first, then:
        case TextChunk(), TextChunk():
            return replace(first, text=first.text + then.text)
        case ThinkingChunk(), ThinkingChunk():
            return replace(first, text=first.text + then.text)
        case ToolInputChunk(), ToolInputChunk():
            return replace(first, partial_json=first.partial_json + then.partial_json)
    raise AssertionError("merged: events of one kind only")


class TaskGeneration(QueuedGeneration):
    """A generation made by a task on the event loop: ``produce(generation)``
    calls ``accepted()`` once the upstream took the work (``started`` returns
    then; at the latest with the first event) and ``emit`` for each event
    (text merged per ``interval`` seconds: module doc; 0 merges nothing).
    Cancelling it cancels the task (an upstream request under way is closed)."""

    def __init__(
        self, produce: Callable[[TaskGeneration], Awaitable[None]], *, interval: float = 0.0
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._events_in: asyncio.Queue[Any] = asyncio.Queue()
        self._accepted: asyncio.Future[None] = loop.create_future()
        # Retrieved here, so an error nobody waited for is not logged as lost.
        self._accepted.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._interval = interval
        self._waiting: Mergeable | None = None  # text held for the next flush
        self._timer: asyncio.TimerHandle | None = None
        self._sent_at = -float("inf")  # loop time of the last text event out
        self._task = loop.create_task(self._run(produce))

    async def _run(self, produce: Callable[[TaskGeneration], Awaitable[None]]) -> None:
        try:
            await produce(self)
        except Exception as exc:  # raised to the reader, or by started()
            if not self._accepted.done():
                self._accepted.set_exception(exc)
            self._flush()
            self._events_in.put_nowait(exc)
        finally:
            self.accepted()
            self._flush()
            self._events_in.put_nowait(END)

    def accepted(self) -> None:
        if not self._accepted.done():
            self._accepted.set_result(None)

    def emit(self, event: EngineEvent) -> None:
        self.accepted()
        if self._interval <= 0 or not isinstance(event, Mergeable):
            self._flush()
            self._events_in.put_nowait(event)
            return
        if self._waiting is not None and type(self._waiting) is type(event):
            self._waiting = merged(self._waiting, event)
            return
        self._flush()
        now = self._loop.time()
        if now - self._sent_at >= self._interval:  # the first, or after a quiet spell
            self._sent_at = now
            self._events_in.put_nowait(event)
            return
        self._waiting = event
        self._timer = self._loop.call_at(self._sent_at + self._interval, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting is not None:
            self._events_in.put_nowait(self._waiting)
            self._waiting = None
            self._sent_at = self._loop.time()

    async def started(self) -> None:
        await asyncio.shield(self._accepted)

    @property
    def _queue(self) -> asyncio.Queue[Any]:
        return self._events_in

    def cancel(self) -> None:
        self._done = True
        self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._accepted.done():
            self._accepted.cancel()

"""The bridge between an engine thread and the event loop: jobs and their generations.

A ``Job`` carries a prompt and its sampling parameters to the engine thread;
events come back through the job's ``asyncio.Queue``, fed with
``call_soon_threadsafe`` so the event loop never blocks. ``END`` ends the
stream; an exception is raised in the consumer. Cancelling sets a flag the
engine thread checks at its next step.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from parley.engines.base import (
    CacheUsage,
    EngineEvent,
    Finished,
    Generation,
    SamplingParams,
    next_or_tick,
)
from parley.engines.llamacpp.output import LlamaPrompt
from parley.engines.llamacpp.prefix_cache import CachePlan


class _EndOfStream:
    """The last item a job's queue receives."""


END = _EndOfStream()


@dataclass
class Job:
    prompt: LlamaPrompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[EngineEvent | BaseException | _EndOfStream]
    cancelled: threading.Event = field(default_factory=threading.Event)
    cache: CachePlan = field(default_factory=CachePlan)
    queued_at: float = field(default_factory=time.monotonic)


class QueueGeneration(Generation):
    def __init__(self, job: Job, on_cancel: Callable[[Job], None]) -> None:
        self._job = job
        self._on_cancel = on_cancel
        self._done = False

    async def _stream(self, interval: float) -> AsyncIterator[EngineEvent | None]:
        """Events until the end of the job; ``None`` after ``interval`` s without one."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await next_or_tick(self._job.events, loop, interval)
                if item is None:
                    yield None
                    continue
                if isinstance(item, _EndOfStream):
                    self._done = True
                    return
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                if isinstance(item, Finished):
                    self._done = True
                yield item
                if self._done:
                    return
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

    @property
    def cache_usage(self) -> CacheUsage:
        return self._job.cache.usage

    def cancel(self) -> None:
        if not self._done and not self._job.cancelled.is_set():
            self._job.cancelled.set()
            self._on_cancel(self._job)

"""The bridge between an engine thread and the event loop: jobs and their generations.

A ``Job`` carries a prompt and its sampling parameters to the engine thread;
events come back through the job's ``asyncio.Queue``, fed with
``call_soon_threadsafe`` so the event loop never blocks. ``END`` ends the
stream; an exception is raised in the consumer. Cancelling sets a flag the
engine thread checks at its next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley.engines.base import (
    CacheUsage,
    EndOfStream,
    EngineEvent,
    QueuedGeneration,
    SamplingParams,
)
from parley.engines.llamacpp.output import LlamaPrompt
from parley.engines.llamacpp.prefix_cache import CachePlan


@dataclass
class Job:
    prompt: LlamaPrompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[EngineEvent | BaseException | EndOfStream]
    cancelled: threading.Event = field(default_factory=threading.Event)
    cache: CachePlan = field(default_factory=CachePlan)
    queued_at: float = field(default_factory=time.monotonic)


class QueueGeneration(QueuedGeneration):
    def __init__(self, job: Job, on_cancel: Callable[[Job], None]) -> None:
        self._job = job
        self._on_cancel = on_cancel

    @property
    def _queue(self) -> asyncio.Queue[Any]:
        return self._job.events

    @property
    def cache_usage(self) -> CacheUsage:
        return self._job.cache.usage

    def cancel(self) -> None:
        if not self._done and not self._job.cancelled.is_set():
            self._job.cancelled.set()
            self._on_cancel(self._job)

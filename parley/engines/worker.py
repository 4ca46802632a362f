"""A thread that owns a model context and runs jobs from a bounded priority queue.

The event loop never blocks on the model: ``submit`` admits a job (or raises
``OverloadedError`` when the queue is full) and returns a ``Generation`` whose
events arrive through an ``asyncio.Queue`` fed with ``call_soon_threadsafe``.
Cancelling a generation sets a flag the worker checks between tokens, so the
context is free again within one token. Jobs run one at a time here; the
batching scheduler replaces ``run_job`` with a loop over many sequences
without changing this contract.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.engines.base import (
    EngineEvent,
    Finished,
    Generation,
    Prompt,
    SamplingParams,
)
from parley.errors import EngineError, OverloadedError, ParleyError

log = logging.getLogger("parley.engine.worker")

Emit = Callable[[Any], None]
RunJob = Callable[["Job", Emit], int]
"""Runs one job on the worker thread, emitting its events; returns tokens generated."""


@dataclass
class Job:
    prompt: Prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[EngineEvent | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Stop:
    """Sentinel that ends the worker thread."""


class WorkerGeneration(Generation):
    def __init__(self, job: Job, on_cancel: Callable[[Job], None]) -> None:
        self._job = job
        self._on_cancel = on_cancel
        self._done = False

    async def _events(self) -> AsyncIterator[EngineEvent]:
        try:
            while True:
                item = await self._job.events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    self._done = True
                    return
        finally:
            if not self._done:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._events()

    def cancel(self) -> None:
        if not self._job.cancelled.is_set():
            self._job.cancelled.set()
            self._on_cancel(self._job)


class Worker:
    def __init__(self, run_job: RunJob, *, max_queue: int, name: str) -> None:
        self._run_job = run_job
        self._max_queue = max_queue
        self._queue: queue.PriorityQueue[tuple[int, int, Job | _Stop]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "tokens": 0}
        self._thread = threading.Thread(target=self._loop, name=f"parley-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put((-1, next(self._order), _Stop()))
        self._thread.join(timeout)

    def submit(self, prompt: Prompt, params: SamplingParams) -> WorkerGeneration:
        with self._lock:
            if self._waiting >= self._max_queue:
                self._counters["rejected"] += 1
                raise OverloadedError(
                    "Overloaded: the request queue is full; retry shortly",
                    headers={"retry-after": "1"},
                )
            self._waiting += 1
        job = Job(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put((params.priority, next(self._order), job))
        return WorkerGeneration(job, self._cancelled)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"waiting": self._waiting, "running": self._running, **self._counters}

    def _cancelled(self, job: Job) -> None:
        with self._lock:
            self._counters["cancelled"] += 1

    def _loop(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if isinstance(job, _Stop):
                return
            with self._lock:
                self._waiting -= 1
                if job.cancelled.is_set():
                    continue
                self._running += 1
            outcome = "completed"
            produced = 0
            try:
                produced = self._run_job(job, functools.partial(self._emit, job))
            except ParleyError as exc:
                outcome = "failed"
                self._emit(job, exc)
            except Exception as exc:  # a bug or a foreign failure: never kill the worker
                outcome = "failed"
                log.exception("engine job failed")
                self._emit(job, EngineError(f"the engine failed: {type(exc).__name__}"))
            finally:
                self._emit(job, None)
                with self._lock:
                    self._running -= 1
                    self._counters["tokens"] += produced
                    if outcome != "completed" or not job.cancelled.is_set():
                        self._counters[outcome] += 1

    @staticmethod
    def _emit(job: Job, event: EngineEvent | BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(job.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            job.cancelled.set()

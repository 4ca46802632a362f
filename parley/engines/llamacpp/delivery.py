"""Handing engine events from the scheduler thread to the requests' event loops.

A step's events go to the event loop right before the next ``llama_decode``
(which runs without the GIL, so the loop encodes and writes them while
llama.cpp computes), at most once every ``interval`` seconds; a job's first
events, its end and errors are *urgent* and go at once. Adjacent text
(thinking, tool input) chunks of one job that wait together are joined into
one, so a client gets one delta per interval rather than one per token:
fewer wake-ups, writes and parses on a machine whose cores are all decoding
(the API's own deltas also carry several tokens).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from parley.engines.base import END, TextChunk, ThinkingChunk, ToolInputChunk
from parley.engines.llamacpp.jobs import Job


class Outbox:
    """Events waiting for their event loop; used from the scheduler thread only."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._events: list[tuple[Job, Any]] = []
        self.urgent = False  # it holds a first event, an end or an error
        self._flushed_at = 0.0

    def add(self, job: Job, *events: Any, urgent: bool = False) -> None:
        self._events.extend((job, event) for event in events)
        self.urgent = self.urgent or urgent

    def end(self, job: Job, last: Any) -> None:
        """``last`` (a ``Finished`` or an error), then the end of the job's stream."""
        self.add(job, last, END, urgent=True)

    @property
    def due(self) -> bool:
        return self.urgent or time.monotonic() - self._flushed_at >= self._interval

    def flush(self) -> None:
        """Hand the waiting events to their event loops, one wake-up per loop."""
        self.urgent = False
        self._flushed_at = time.monotonic()
        if not self._events:
            return
        # Jobs are keyed by identity (a dataclass job is not hashable).
        by_loop: dict[asyncio.AbstractEventLoop, dict[int, tuple[Job, list[Any]]]] = {}
        for job, event in self._events:
            by_loop.setdefault(job.loop, {}).setdefault(id(job), (job, []))[1].append(event)
        for jobs in by_loop.values():
            for _, events in jobs.values():
                if len(events) > 1:
                    events[:] = joined(events)
        self._events = []
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, jobs)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in jobs.values():
                    job.cancelled.set()


_JOINABLE = (TextChunk, ThinkingChunk, ToolInputChunk)


def joined(events: list[Any]) -> list[Any]:
    """The events with each run of same-kind text chunks joined into one."""
    out: list[Any] = []
    for kind, run in itertools.groupby(events, key=type):
        if kind not in _JOINABLE:
            out.extend(run)
        elif kind is ToolInputChunk:
            out.append(ToolInputChunk("".join(chunk.partial_json for chunk in run)))
        else:
            out.append(kind("".join(chunk.text for chunk in run)))
    return out


def _put_all(jobs: dict[int, tuple[Job, list[Any]]]) -> None:
    for job, events in jobs.values():
        for event in events:
            job.events.put_nowait(event)

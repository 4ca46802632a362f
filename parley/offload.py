"""Where CPU-heavy request work runs: inline when small, in worker threads when big.

Parsing and validating a request body, checking it for duplicate keys and
building its conversation and prompt are quick for ordinary requests but take
seconds for a body of tens of megabytes, and build hundreds of megabytes of
Python objects. On the event loop that would stall every other client. So a
request whose body has ``threshold`` bytes or more takes a *slot* (one of
``workers``) from before its body is parsed until its prompt is ready, and
does that work in worker threads: the loop stays free, and a burst of big
bodies waits for slots instead of holding many half-built requests at once.
Small requests keep the fast path (no slot, no thread hop). Rendering and
tokenizing run in a thread from a far smaller size (``RENDER_INLINE_BYTES``):
tokenizing takes about 0.25 ms per KiB here, and below a few KiB that is less
than the hop to a thread and back (and the GIL handed to and fro meanwhile).

Threads share the GIL: the loop gets it between the workers' bytecodes and C
calls, so other clients wait for milliseconds rather than a whole parse. The
longest pauses left are the garbage collector's full passes over a big
request's objects, which hold the GIL throughout (RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

HEAVY_BYTES = 256 * 1024  # bodies from this size are parsed and rendered off the loop
HEAVY_WORKERS = 2  # big requests parsed and rendered at once; the others wait their turn
RENDER_INLINE_BYTES = 4 * 1024  # bodies below this are rendered on the loop (about 1 ms)


class Offload:
    def __init__(self, threshold: int = HEAVY_BYTES, workers: int = HEAVY_WORKERS) -> None:
        self.threshold = threshold
        self._slots = anyio.CapacityLimiter(workers)

    def heavy(self, size: int) -> bool:
        return size >= self.threshold

    def inline_render(self, size: int) -> bool:
        """Whether a body of ``size`` bytes (0: not known) renders on the loop."""
        return 0 < size < min(RENDER_INLINE_BYTES, self.threshold)

    @contextlib.asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        """Held around a request's parsing and rendering: one of the ``workers``
        for a big request (waiting for it if need be), nothing for a small one."""
        if not self.heavy(size):
            yield
            return
        async with self._slots:
            yield

    async def run(self, size: int, work: Callable[[], T]) -> T:
        """``work()``: inline for a request of ``size`` bytes below the threshold,
        else in a worker thread (the caller holds the request's ``slot``)."""
        if not self.heavy(size):
            return work()
        return await anyio.to_thread.run_sync(work)

"""Admission, the same from every engine: its errors (the queue is full, or a
request waited longer than the queue timeout without starting: both 529
``overloaded_error`` with ``retry-after``, as the API answers when
overloaded), and ``Slots`` for engines that run on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

from parley.errors import OverloadedError


def queue_full() -> OverloadedError:
    return OverloadedError(
        "Overloaded: the request queue is full; retry shortly", headers={"retry-after": "1"}
    )


def waited_too_long(seconds: float) -> OverloadedError:
    return OverloadedError(
        f"Overloaded: the request waited {seconds:g} s for capacity without starting; retry later",
        headers={"retry-after": "5"},
    )


class Slots:
    """Admission for an engine that runs on the event loop (an upstream): at
    most ``size`` requests run; up to ``max_queue`` more wait, by priority
    (interactive before batch work) then arrival, at most ``timeout`` s."""

    def __init__(self, size: int, *, max_queue: int, timeout: float) -> None:
        self.size = size
        self._max_queue = max_queue
        self._timeout = timeout
        self.running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def check(self) -> None:
        """Raise 529 now if the request could not even wait (``submit`` must not block)."""
        if self.running + len(self._waiting) >= self.size + self._max_queue:
            raise queue_full()

    @contextlib.asynccontextmanager
    async def held(self, priority: int = 0) -> AsyncIterator[None]:
        if self.running >= self.size or self._waiting:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (priority, next(self._order), future)
            heapq.heappush(self._waiting, entry)
            try:
                await asyncio.wait_for(asyncio.shield(future), self._timeout)
            except BaseException as exc:  # timed out, or the client left
                if entry in self._waiting:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                elif future.done() and not future.cancelled():
                    self._release()  # handed its slot just as it gave up: passed on
                future.cancel()
                if isinstance(exc, TimeoutError):
                    raise waited_too_long(self._timeout) from None
                raise
            # ``_release`` handed its slot to this request (running was not lowered).
        else:
            self.running += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes to it: running stays the same
                return
        self.running -= 1

"""A generation made by a task on the event loop (every upstream engine's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from parley.engines.base import END, EngineEvent, QueuedGeneration

Emit = Callable[[EngineEvent], None]


class TaskGeneration(QueuedGeneration):
    """A generation made by a task on the event loop: ``produce(generation)``
    calls ``accepted()`` once the upstream took the work (``started`` returns
    then; at the latest with the first event) and ``emit`` for each event.
    Cancelling it cancels the task (an upstream request under way is closed)."""

    def __init__(self, produce: Callable[[TaskGeneration], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        self._events_in: asyncio.Queue[Any] = asyncio.Queue()
        self._accepted: asyncio.Future[None] = loop.create_future()
        # Retrieved here, so an error nobody waited for is not logged as lost.
        self._accepted.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._task = loop.create_task(self._run(produce))

    async def _run(self, produce: Callable[[TaskGeneration], Awaitable[None]]) -> None:
        try:
            await produce(self)
        except Exception as exc:  # raised to the reader, or by started()
            if not self._accepted.done():
                self._accepted.set_exception(exc)
            self._events_in.put_nowait(exc)
        finally:
            self.accepted()
            self._events_in.put_nowait(END)

    def accepted(self) -> None:
        if not self._accepted.done():
            self._accepted.set_result(None)

    def emit(self, event: EngineEvent) -> None:
        self.accepted()
        self._events_in.put_nowait(event)

    async def started(self) -> None:
        await asyncio.shield(self._accepted)

    @property
    def _queue(self) -> asyncio.Queue[Any]:
        return self._events_in

    def cancel(self) -> None:
        self._done = True
        self._task.cancel()
        if not self._accepted.done():
            self._accepted.cancel()

"""A generation made by a task on the event loop (every upstream engine's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from parley.engines.base import END, EngineEvent, QueuedGeneration

Emit = Callable[[EngineEvent], None]


class TaskGeneration(QueuedGeneration):
    """A generation made by a task on the event loop; cancelling it cancels the
    task (an upstream request under way is closed)."""

    def __init__(self, produce: Callable[[Emit], Any]) -> None:
        self._events_in: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(produce))

    async def _run(self, produce: Callable[[Emit], Any]) -> None:
        try:
            await produce(self._events_in.put_nowait)
        except Exception as exc:  # raised to the reader
            self._events_in.put_nowait(exc)
        finally:
            self._events_in.put_nowait(END)

    @property
    def _queue(self) -> asyncio.Queue[Any]:
        return self._events_in

    def cancel(self) -> None:
        self._done = True
        self._task.cancel()

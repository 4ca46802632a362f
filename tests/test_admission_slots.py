"""``engines.admission.Slots``: admission for engines on the event loop (upstreams)."""

from __future__ import annotations

import asyncio

import pytest

from parley.engines.admission import Slots
from parley.errors import OverloadedError


async def settle() -> None:
    """Let every task created so far run up to its first wait (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_beyond_the_slots_wait_by_priority_then_arrival() -> None:
    async def scenario() -> list[str]:
        slots = Slots(1, max_queue=8, timeout=60)
        order: list[str] = []
        release = asyncio.Event()

        async def run(name: str, priority: int, hold: asyncio.Event | None = None) -> None:
            async with slots.held(priority):
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(run("first", 0, release))
        await settle()  # it takes the slot
        waiting = [
            asyncio.create_task(run("batch", 10)),
            asyncio.create_task(run("interactive-1", 0)),
            asyncio.create_task(run("interactive-2", 0)),
        ]
        await settle()
        assert slots.waiting == 3
        assert slots.running == 1
        release.set()
        await asyncio.gather(first, *waiting)
        assert slots.running == 0 and slots.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["first", "interactive-1", "interactive-2", "batch"]


def test_a_full_queue_is_refused_at_once() -> None:
    async def scenario() -> None:
        slots = Slots(1, max_queue=1, timeout=60)
        hold = asyncio.Event()

        async def run() -> None:
            async with slots.held():
                await hold.wait()

        tasks = [asyncio.create_task(run()), asyncio.create_task(run())]
        await settle()
        assert slots.waiting == 1
        with pytest.raises(OverloadedError, match="queue is full"):
            slots.check()
        hold.set()
        await asyncio.gather(*tasks)
        slots.check()  # room again

    asyncio.run(scenario())


def test_a_waiter_that_leaves_or_times_out_gives_its_place_back() -> None:
    async def scenario() -> None:
        slots = Slots(1, max_queue=4, timeout=0.05)
        hold = asyncio.Event()

        async def run() -> None:
            async with slots.held():
                await hold.wait()

        owner = asyncio.create_task(run())
        await settle()
        with pytest.raises(OverloadedError, match="waited"):
            async with slots.held():
                raise AssertionError("never admitted")
        leaving = asyncio.create_task(run())
        await settle()
        assert slots.waiting == 1
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert slots.waiting == 0
        hold.set()
        await owner
        assert slots.running == 0

    asyncio.run(scenario())

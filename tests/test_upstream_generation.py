"""An upstream generation's events: text merged per interval, never held back.

No sleeps: the tests read the generation's own queue, which the merging timer
fills (the wait for it is bounded by the interval, not a schedule).
"""

from __future__ import annotations

import asyncio

from parley.engines.base import Finished, TextChunk, ThinkingChunk, ToolCallStart, ToolInputChunk
from parley.engines.upstream.generation import TaskGeneration


async def _events(generation: TaskGeneration) -> list[object]:
    return [event async for event in generation]


def test_text_is_merged_and_any_other_event_sends_it_first() -> None:
    async def produce(run: TaskGeneration) -> None:
        for piece in ("He", "llo", ", ", "world"):
            run.emit(TextChunk(piece))
        run.emit(ToolCallStart("toolu_1", "f"))
        run.emit(ToolInputChunk('{"a"'))
        run.emit(ToolInputChunk(": 1}"))
        run.emit(Finished("tool_use", 7))

    async def main() -> list[object]:
        return await _events(TaskGeneration(produce, interval=3600.0))

    assert asyncio.run(main()) == [
        TextChunk("He"),  # the first goes out at once
        TextChunk("llo, world"),  # the rest of the interval's text, sent by the next event
        ToolCallStart("toolu_1", "f"),
        ToolInputChunk('{"a": 1}'),
        Finished("tool_use", 7),
    ]


def test_waiting_text_goes_out_on_its_timer_while_the_upstream_is_silent() -> None:
    async def main() -> list[object]:
        release = asyncio.Event()

        async def produce(run: TaskGeneration) -> None:
            run.emit(ThinkingChunk("a"))
            run.emit(ThinkingChunk("b"))
            await release.wait()  # the upstream stalls with "b" waiting
            run.emit(Finished("end_turn", 2))

        generation = TaskGeneration(produce, interval=0.01)
        events = aiter(generation)
        seen = [await anext(events), await anext(events)]  # "b" came by its timer
        release.set()
        seen.append(await anext(events))
        return seen

    assert asyncio.run(main()) == [ThinkingChunk("a"), ThinkingChunk("b"), Finished("end_turn", 2)]


def test_no_interval_sends_every_event() -> None:
    async def produce(run: TaskGeneration) -> None:
        run.emit(TextChunk("a"))
        run.emit(TextChunk("b"))
        run.emit(Finished("end_turn", 2))

    async def main() -> list[object]:
        return await _events(TaskGeneration(produce))

    assert asyncio.run(main()) == [TextChunk("a"), TextChunk("b"), Finished("end_turn", 2)]


def test_text_waiting_when_the_upstream_fails_reaches_the_reader_before_the_error() -> None:
    async def produce(run: TaskGeneration) -> None:
        run.emit(TextChunk("a"))
        run.emit(TextChunk("b"))
        raise RuntimeError("upstream gone")

    async def main() -> list[object]:
        seen: list[object] = []
        try:
            async for event in TaskGeneration(produce, interval=3600.0):
                seen.append(event)
        except RuntimeError as exc:
            seen.append(str(exc))
        return seen

    assert asyncio.run(main()) == [TextChunk("a"), TextChunk("b"), "upstream gone"]

"""Continuous batching on the real embedded model.

Many requests decode together; each must finish exactly as it would alone,
with its own stop reason and usage; cancellation frees capacity; the queue
is bounded; no KV cells leak.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx
import pytest

from parley.config import load_settings
from parley.conversation import Conversation, TextPart, Turn
from parley.engines.base import EngineEvent, Finished, Generation, SamplingParams, TextChunk
from parley.engines.llamacpp import LlamaCppEngine, from_settings
from tests.conftest import LONG_MESSAGES, MODEL, Server, long_body

pytestmark = pytest.mark.model

TOPICS = [
    "sea",
    "moon",
    "sun",
    "cats",
    "dogs",
    "rivers",
    "trees",
    "stars",
    "bees",
    "clouds",
    "rain",
    "snow",
    "wind",
    "fire",
    "rocks",
    "birds",
]


def ask(i: int) -> str:
    return f"Tell me fact number {i} about the {TOPICS[i]}."


@pytest.fixture(scope="module")
def wide_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--parallel", "16", "--ping-interval", "0.5")


def test_sixteen_concurrent_requests_match_their_unbatched_runs(wide_server: Server) -> None:
    client = wide_server.client()
    greedy = {"temperature": 0.0}
    # Each request alone first (reference), with its own max_tokens.
    alone = [
        client.messages.create(
            model=MODEL,
            max_tokens=10 + i,
            extra_body=greedy,
            messages=[{"role": "user", "content": ask(i)}],
        )
        for i in range(16)
    ]
    # A stop sequence taken from each reference answer, for half the requests.
    stops: list[list[str]] = []
    for i, message in enumerate(alone):
        words = (
            [w for w in message.content[0].text.split() if len(w) > 3] if message.content else []
        )  # type: ignore[union-attr]
        stops.append([words[len(words) // 2]] if i % 2 and words else [])

    async def one(c: anthropic.AsyncAnthropic, i: int) -> anthropic.types.Message:
        return await c.messages.create(
            model=MODEL,
            max_tokens=10 + i,
            extra_body=greedy,
            stop_sequences=stops[i],
            messages=[{"role": "user", "content": ask(i)}],
        )

    async def all_at_once() -> list[anthropic.types.Message]:
        async with wide_server.async_client() as c:
            return await asyncio.gather(*(one(c, i) for i in range(16)))

    together = asyncio.run(all_at_once())
    for i, (ref, got) in enumerate(zip(alone, together, strict=True)):
        ref_text = ref.content[0].text if ref.content else ""  # type: ignore[union-attr]
        got_text = got.content[0].text if got.content else ""  # type: ignore[union-attr]
        assert got.usage.input_tokens == ref.usage.input_tokens
        if stops[i] and stops[i][0] in ref_text:
            assert got.stop_reason == "stop_sequence", i
            assert got.stop_sequence == stops[i][0]
            assert got_text == ref_text[: ref_text.index(stops[i][0])]
        else:
            assert got_text == ref_text, i  # greedy output is the same batched or alone
            assert got.stop_reason == ref.stop_reason
            assert got.usage.output_tokens == ref.usage.output_tokens
            if got.stop_reason == "max_tokens":
                assert got.usage.output_tokens == 10 + i
    stats = wide_server.wait_idle(MODEL)
    assert stats["kv_cached_tokens"] <= stats["kv_capacity"]


def test_cancelling_a_stream_lets_a_queued_request_start(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--parallel", "1", "--max-queue", "1")
    queued: list[anthropic.types.Message] = []

    with httpx.stream(
        "POST", server.url + "/v1/messages", json=long_body(stream=True), timeout=60
    ) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the stream
        for line in lines:
            if line.startswith("event: content_block_delta"):
                break
        # The only slot is busy: the next request waits in the queue...
        waiter = threading.Thread(
            target=lambda: queued.append(
                server.client().messages.create(
                    model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
                )
            )
        )
        waiter.start()
        server.wait_stats(MODEL, waiting=1)
        # ...and a third one finds the queue full.
        with pytest.raises(anthropic.OverloadedError):
            server.client().messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
            )
    # Leaving the stream cancels it; the queued request then runs to completion.
    waiter.join(timeout=60)
    assert queued and queued[0].stop_reason in {"end_turn", "max_tokens"}
    stats = server.wait_idle(MODEL)
    assert stats["cancelled"] >= 1 and stats["rejected"] == 1


def test_no_leaks_after_a_storm_of_cancels(wide_server: Server) -> None:
    before = wide_server.wait_idle(MODEL)

    async def abandon(i: int) -> None:
        body = long_body(500, stream=True)
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream("POST", wide_server.url + "/v1/messages", json=body) as response,
        ):
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("event: content_block_delta"):
                    seen += 1
                    if seen > i % 5:
                        return  # disconnect mid-stream

    async def storm() -> None:
        await asyncio.gather(*(abandon(i) for i in range(40)))

    asyncio.run(storm())
    stats = wide_server.wait_idle(MODEL)
    assert stats["cancelled"] - before["cancelled"] == 40
    assert stats["tokens"] - before["tokens"] < 40 * 100
    assert all(not slot["busy"] for slot in stats["slots"])
    for slot in stats["slots"]:
        # Every KV cell is accounted for: a slot's cells are exactly its cached tokens.
        assert slot["kv_pos_max"] == slot["cached"] - 1, slot
    assert stats["kv_cached_tokens"] <= stats["kv_capacity"]
    # The engine still answers.
    message = wide_server.client().messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.stop_reason in {"end_turn", "max_tokens"}


def greedy_ask(client: anthropic.Anthropic, topic: str) -> anthropic.types.Message:
    # Long, distinct prompts: they share only the chat template's first tokens, so each
    # takes a slot of its own, and each KV state is 1.2-1.6 MB (~12 KB a token).
    return client.messages.create(
        model=MODEL,
        max_tokens=24,
        extra_body={"temperature": 0.0},
        messages=[{"role": "user", "content": f"Tell me about the {topic}. " * 12}],
    )


def assert_cells_accounted(stats: dict[str, Any]) -> None:
    for slot in stats["slots"]:
        # A slot's cells in the context are exactly its resident tokens; parked ones have none.
        assert slot["kv_pos_max"] == slot["cached"] - 1, slot
        assert not (slot["cached"] and slot["parked"]), slot


def test_idle_slots_leave_the_context_and_come_back_for_their_prefix(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--parallel", "2")
    client = server.client()
    sea = greedy_ask(client, "sea")
    stats = server.wait_idle(MODEL)
    assert stats["parks"] == 0 and stats["parked_tokens"] == 0
    assert_cells_accounted(stats)

    # Other work starts: the idle slot's cells move to host memory.
    greedy_ask(client, "birds")
    stats = server.wait_idle(MODEL)
    assert stats["parks"] == 1 and stats["unparks"] == 0
    parked = [s for s in stats["slots"] if s["parked"]]
    assert len(parked) == 1 and parked[0]["kv_pos_max"] == -1
    assert stats["parked_tokens"] == parked[0]["parked"] >= sea.usage.input_tokens
    assert stats["parked_bytes"] > 0
    assert_cells_accounted(stats)

    # The same prompt again: its slot's cells come back and only the rest is prefilled,
    # with the same greedy answer; the bird's slot is parked in turn.
    before = stats
    again = greedy_ask(client, "sea")
    stats = server.wait_idle(MODEL)
    assert stats["unparks"] == 1 and stats["parks"] == 2
    assert stats["reused_tokens"] - before["reused_tokens"] == sea.usage.input_tokens - 1
    assert again.content == sea.content and again.usage == sea.usage
    assert_cells_accounted(stats)


def test_a_new_conversation_takes_the_least_recently_used_slot(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--parallel", "2")
    client = server.client()
    greedy_ask(client, "sea")
    birds = greedy_ask(client, "birds")
    # No empty slot left and nothing shared beyond the template: the sea's slot goes
    # (used longer ago; its template tokens are reused); the birds' state survives.
    greedy_ask(client, "moon")
    before = server.wait_idle(MODEL)
    again = greedy_ask(client, "birds")
    stats = server.wait_idle(MODEL)
    assert stats["unparks"] == before["unparks"] + 1
    # All of the prompt but its last token came from the parked state.
    assert stats["reused_tokens"] - before["reused_tokens"] == birds.usage.input_tokens - 1
    assert sum(1 for s in stats["slots"] if s["parked"]) == 1  # the moon's, parked in turn
    assert again.content == birds.content and again.usage == birds.usage
    assert_cells_accounted(stats)


def test_parking_keeps_to_its_budget(server_factory: Callable[..., Server]) -> None:
    # One state fits in 2 MiB, two do not.
    server = server_factory("--parallel", "3", "--idle-cache-mb", "2")
    client = server.client()
    for text in ("sea", "birds", "moon"):
        greedy_ask(client, text)
    stats = server.wait_idle(MODEL)
    assert stats["parks"] == 2
    assert 0 < stats["parked_bytes"] <= 2 << 20
    # The least recently used state (the sea's) was dropped, the bird's kept.
    assert sorted(s["parked"] for s in stats["slots"]).count(0) == 2
    assert_cells_accounted(stats)
    greedy_ask(client, "sea")  # prefilled again: nothing to restore
    assert server.wait_idle(MODEL)["unparks"] == 0


def test_no_parking_keeps_idle_cells_in_the_context(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--parallel", "2", "--idle-cache-mb", "0")
    client = server.client()
    greedy_ask(client, "sea")
    greedy_ask(client, "birds")
    stats = server.wait_idle(MODEL)
    assert stats["parks"] == 0 and stats["parked_tokens"] == 0
    assert all(s["cached"] > 0 for s in stats["slots"])
    assert_cells_accounted(stats)


def test_short_requests_are_not_starved_by_a_long_one(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--parallel", "2")
    body = long_body(stream=True)
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=120) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the stream
        for line in lines:
            if line.startswith("event: content_block_delta"):
                break
        for _ in range(3):
            short = server.client().messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
            )
            assert short.stop_reason in {"end_turn", "max_tokens"}
        assert server.stats()[MODEL]["running"] >= 1  # the long one is still going


def test_interactive_work_goes_before_batch_work() -> None:
    async def main() -> tuple[list[str], dict[str, Any]]:
        engine: LlamaCppEngine = from_settings(load_settings({"parallel": 1}, environ={}))
        await engine.start()
        order: list[str] = []

        def submit(text: str, priority: int, max_tokens: int, prefill: str = "") -> Generation:
            turns = (Turn("user", (TextPart(text),)),)
            conv = Conversation(system=None, turns=turns, prefill=prefill)
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, priority=priority)
            return engine.submit(engine.prepare(conv), params)

        async def drain(name: str, events: AsyncIterator[EngineEvent]) -> None:
            async for event in events:
                if isinstance(event, Finished):
                    order.append(name)

        try:
            # Greedy counting runs far past its max_tokens: it holds the only slot...
            (user, prefill) = (m["content"] for m in LONG_MESSAGES)
            first = aiter(submit(user, 0, 64, prefill))
            started = await anext(first)
            # ...while a batch request and then an interactive one queue up behind it
            # (submitting queues at once: nothing runs in between).
            batch = submit("Say batch", 10, 3)
            interactive = submit("Say interactive", 0, 3)
            queued = engine.stats()
            await asyncio.gather(
                drain("first", first),
                drain("batch", aiter(batch)),
                drain("interactive", aiter(interactive)),
            )
            assert not isinstance(started, Finished)
        finally:
            await engine.close()
        return order, queued

    order, queued = asyncio.run(main())
    assert (queued["running"], queued["waiting"]) == (1, 2), queued
    assert order == ["first", "interactive", "batch"]


def test_engine_events_are_text_then_one_finish() -> None:
    async def main() -> list[Any]:
        engine = from_settings(load_settings({"parallel": 2}, environ={}))
        await engine.start()
        try:
            conv = Conversation(system=None, turns=(Turn("user", (TextPart("Hello"),)),))
            events = [
                e async for e in engine.submit(engine.prepare(conv), SamplingParams(max_tokens=8))
            ]
        finally:
            await engine.close()
        return events

    events = asyncio.run(main())
    assert all(isinstance(e, TextChunk) for e in events[:-1])
    assert isinstance(events[-1], Finished)


def test_queue_timeout_on_the_model(server_factory: Callable[..., Server]) -> None:
    server = server_factory("--parallel", "1", "--queue-timeout", "1")
    client = server.client()
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json=long_body(stream=True), timeout=60
    ) as busy:
        lines = busy.iter_lines()
        next(line for line in lines if "content_block_delta" in line)
        with pytest.raises(anthropic.APIStatusError) as waited:
            client.messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert waited.value.status_code == 529 and "for capacity" in str(waited.value)
    assert server.wait_idle(MODEL)["timed_out"] == 1

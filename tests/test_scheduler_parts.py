"""The scheduler's parts as pure functions: the waiting queue, placement and a
step's batch, on plain values (no thread, no model, no native engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.conversation import Conversation, Turn
from parley.engines.base import SamplingParams
from parley.engines.llamacpp.jobs import Job
from parley.engines.llamacpp.output import LlamaPrompt
from parley.engines.llamacpp.placement import place
from parley.engines.llamacpp.prefix_cache import Breakpoint, CachePlan, Entry
from parley.engines.llamacpp.sequence import Running
from parley.engines.llamacpp.slots import Slot
from parley.engines.llamacpp.step import plan_step
from parley.engines.llamacpp.waiting import WaitQueue


def job(tokens: list[int], max_tokens: int = 10, *, priority: int = 0, **extra: Any) -> Job:
    conversation = Conversation(system=None, turns=(Turn("user", ()),))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, priority=priority)
    loop = asyncio.new_event_loop()
    loop.close()  # never used: nothing is delivered in these tests
    return Job(LlamaPrompt(conversation, "", tokens), params, loop, asyncio.Queue(), **extra)


def running(slot: Slot, prompt_left: list[int], budget: int = 10) -> Running:
    slot.busy = True
    return Running.begin(job(prompt_left, budget), slot, object(), budget, list(prompt_left))


# --- the waiting queue ----------------------------------------------------------


def test_waiting_requests_go_by_priority_then_arrival() -> None:
    queue = WaitQueue()
    batch, first, second = job([1], priority=10), job([2]), job([3])
    for j in (batch, first, second):
        queue.push(j)
    assert [queue.pop(), queue.pop(), queue.pop()] == [first, second, batch]


def test_cancelled_and_overdue_requests_leave_at_the_reap() -> None:
    queue = WaitQueue()
    old, new, gone = job([1]), job([2]), job([3])
    old.queued_at, new.queued_at, gone.queued_at = 1.0, 100.0, 100.0
    for j in (old, new, gone):
        queue.push(j)
    gone.cancelled.set()
    assert queue.live() == 2
    assert queue.overdue(queued_before=50.0) == [old]
    assert old.cancelled.is_set()
    assert sorted(map(id, queue.reap())) == sorted(map(id, [old, gone]))
    assert len(queue) == 1 and queue.first() is new


# --- placement ------------------------------------------------------------------


def test_the_slot_sharing_the_prompt_is_reused_up_to_the_last_token() -> None:
    slots = [Slot(0, cached=[5, 6, 7, 8]), Slot(1)]
    placement = place(job([5, 6, 7, 8, 9], 4), slots, [], capacity=100, parking=False)
    assert placement.slot is slots[0] and placement.reuse == 4
    assert placement.budget == 4 and placement.fits and not placement.evict


def test_a_reservation_over_the_room_waits_while_others_run() -> None:
    slots = [Slot(0), Slot(1)]
    other = running(slots[0], [1] * 40, budget=40)  # reserves 80 of 100 cells
    placement = place(job([2] * 20, 10), slots, [other], capacity=100, parking=False)
    assert not placement.fits
    alone = place(job([2] * 20, 10), [Slot(0), Slot(1)], [], capacity=100, parking=False)
    assert alone.fits


def test_the_budget_is_capped_by_the_context() -> None:
    placement = place(job([1] * 90, 50), [Slot(0)], [], capacity=100, parking=False)
    assert placement.budget == 10


def test_idle_slots_are_evicted_biggest_first_without_parking() -> None:
    slots = [Slot(0, cached=[1] * 30), Slot(1, cached=[2] * 50), Slot(2, cached=[3] * 10), Slot(3)]
    placement = place(job([4] * 30, 10), slots, [], capacity=100, parking=False)
    # 100 - 90 idle cells leaves 10; dropping the 50-token slot gives 60 >= 40.
    assert placement.slot is slots[3] and placement.evict == [slots[1]] and placement.fits


def test_with_parking_idle_cells_do_not_count_and_nothing_is_evicted() -> None:
    slots = [Slot(0, cached=[1] * 60), Slot(1)]
    placement = place(job([4] * 30, 10), slots, [], capacity=100, parking=True)
    assert placement.fits and not placement.evict and placement.idle == [slots[0]]


def test_a_longer_cache_entry_is_restored_instead_of_the_slots_prefix() -> None:
    tokens = list(range(1, 21))
    entry = Entry(b"k", 16, state=None, nbytes=0, ttl="5m", expires_at=0.0)
    plan = CachePlan(read=entry)
    slots = [Slot(0, cached=tokens[:12])]
    placement = place(job(tokens, 5, cache=plan), slots, [], capacity=100, parking=False)
    assert placement.restore is entry and placement.reuse == 16


def test_reuse_stops_at_a_snapshot_still_to_take() -> None:
    tokens = list(range(1, 21))
    plan = CachePlan(writes=[Breakpoint(8)])
    slots = [Slot(0, cached=tokens[:15])]
    placement = place(job(tokens, 5, cache=plan), slots, [], capacity=100, parking=False)
    assert placement.reuse == 8


# --- a step's batch ---------------------------------------------------------------


def test_a_step_feeds_sampled_tokens_then_prompt_chunks_within_the_chunk_size() -> None:
    decoding = running(Slot(0, cached=[1, 2, 3]), [])
    decoding.pending = 42
    prefilling = running(Slot(1), list(range(100, 130)))
    step = plan_step([decoding, prefilling], n_batch=64, prefill_chunk=8)
    assert [(e.token, e.pos, e.seq_id, e.logits) for e in step.entries[:2]] == [
        (42, 3, 0, True),
        (100, 0, 1, False),
    ]
    assert len(step.entries) == 1 + 8  # the chunk size bounds prefill while a stream decodes
    assert [run for _, run in step.samplers] == [decoding]  # the prompt is not done yet
    assert step.decoded() == [prefilling]
    assert decoding.pending is None and decoding.slot.cached == [1, 2, 3, 42]
    assert prefilling.slot.cached == list(range(100, 108)) and len(prefilling.prompt_left) == 22


def test_the_last_chunk_of_a_prompt_asks_for_logits() -> None:
    run = running(Slot(0), [1, 2, 3])
    step = plan_step([run], n_batch=64, prefill_chunk=8)
    assert [e.logits for e in step.entries] == [False, False, True]
    assert step.samplers == [(2, run)]


def test_a_chunk_ends_at_the_next_cache_breakpoint() -> None:
    run = running(Slot(0), list(range(1, 21)))
    run.writes = [Breakpoint(6)]
    step = plan_step([run], n_batch=64, prefill_chunk=64)
    assert len(step.entries) == 6 and not step.samplers

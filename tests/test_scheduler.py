"""The decode loop's logic, in milliseconds, on a fake native engine (no model).

The fake keeps a KV cell set per sequence, refuses a batch that would not fit
the context (as llama.cpp does), and records every batch, so admission, the
KV reservation, slot choice, parking, the prompt cache, cancellation and the
forced end of a thinking section are checked exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from parley.conversation import Conversation, Turn
from parley.engines.base import Finished, SamplingParams, TextChunk, ThinkingChunk
from parley.engines.llamacpp.ops import BatchEntry
from parley.engines.llamacpp.output import THINK_FORCED_CLOSE, Grammar, LlamaPrompt
from parley.engines.llamacpp.prefix_cache import Breakpoint, PrefixCache
from parley.engines.llamacpp.scheduler import BatchScheduler
from parley.errors import EngineError

X = 7  # the token every sequence writes: "x"


class KvNative:
    """A native engine that decodes nothing but keeps the KV bookkeeping honest."""

    def __init__(self, n_ctx: int = 256, n_batch: int = 64) -> None:
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.cells: dict[int, set[int]] = {}
        self.batches: list[list[BatchEntry]] = []
        self.samplers = 0
        self.gate = threading.Event()  # decodes past ``gate_after`` wait until it is set
        self.gate.set()
        self.gate_after = 0
        self.decoding = threading.Event()  # a decode is waiting at the gate

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        if len(self.batches) >= self.gate_after and not self.gate.is_set():
            self.decoding.set()
            assert self.gate.wait(60), "the test never opened the gate"
        used = sum(len(c) for c in self.cells.values())
        new = {(e.seq_id, e.pos) for e in entries} - {
            (s, p) for s, cells in self.cells.items() for p in cells
        }
        if used + len(new) > self.n_ctx:
            raise EngineError("llama.cpp found no room in the KV cache for this batch")
        for entry in entries:
            self.cells.setdefault(entry.seq_id, set()).add(entry.pos)
        self.batches.append(list(entries))

    def sample(self, sampler: Any, index: int) -> int:
        return X

    def is_eog(self, token: int) -> bool:
        return token == 0

    def piece(self, token: int) -> bytes:
        return b"x"

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return [2] * len(text)

    def forget(self, seq_id: int, from_pos: int = 0) -> None:
        self.cells[seq_id] = {p for p in self.cells.get(seq_id, set()) if p < from_pos}

    def save_seq(self, seq_id: int) -> tuple[Any, int]:
        cells = frozenset(self.cells.get(seq_id, set()))
        return cells, 100 * len(cells)

    def restore_seq(self, seq_id: int, state: Any, size: int) -> bool:
        self.cells[seq_id] = set(state)
        return True

    def seq_pos_max(self, seq_id: int) -> int:
        return max(self.cells.get(seq_id, set()), default=-1)

    def new_sampler(self, **_: Any) -> Any:
        self.samplers += 1
        return object()

    def free_sampler(self, sampler: Any) -> None:
        self.samplers -= 1

    def seqs_in(self, batch: list[BatchEntry]) -> set[int]:
        return {entry.seq_id for entry in batch}


def prompt(tokens: list[int], *, thinking: int | None = None, **extra: Any) -> LlamaPrompt:
    conversation = Conversation(system=None, turns=(Turn("user", ()),), thinking_budget=thinking)
    return LlamaPrompt(conversation, "", tokens, **extra)


def run(scheduler: BatchScheduler, *jobs: tuple[LlamaPrompt, int]) -> list[list[Any]]:
    """Submit the jobs together; each one's events, in order."""

    async def one(p: LlamaPrompt, max_tokens: int) -> list[Any]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        return [event async for event in scheduler.submit(p, params)]

    async def all_of() -> list[list[Any]]:
        return list(await asyncio.gather(*(one(p, n) for p, n in jobs)))

    return asyncio.run(all_of())


@pytest.fixture
def make() -> Any:
    started: list[BatchScheduler] = []

    def build(native: KvNative, **options: Any) -> BatchScheduler:
        options.setdefault("n_parallel", 2)
        options.setdefault("max_queue", 8)
        options.setdefault("prefill_chunk", 16)
        scheduler = BatchScheduler(native, **options)
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield build
    for scheduler in started:
        scheduler.stop()


def wait_for(scheduler: BatchScheduler, done: Any) -> dict[str, Any]:
    """The scheduler's stats once ``done`` holds for them (fails after a minute)."""
    for _ in range(60_000):
        stats = scheduler.stats()
        if done(stats):
            return stats
        threading.Event().wait(0.001)  # a poll of observable state, not a guess
    raise AssertionError(stats)


def text(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextChunk))


def test_a_job_waits_until_its_kv_reservation_fits(make: Any) -> None:
    native = KvNative(n_ctx=64)
    scheduler = make(native)
    # Each reserves 10 + 40 of 64 cells: the second starts after the first ends.
    a, b = run(scheduler, (prompt([1] * 10), 40), (prompt([3] * 10), 40))
    assert a[-1] == Finished("max_tokens", 40) and b[-1] == Finished("max_tokens", 40)
    assert not any(len(native.seqs_in(batch)) > 1 for batch in native.batches)
    assert native.samplers == 0


def test_jobs_that_fit_decode_together(make: Any) -> None:
    native = KvNative(n_ctx=256)
    scheduler = make(native)
    a, b = run(scheduler, (prompt([1] * 10), 20), (prompt([3] * 10), 20))
    assert text(a) == text(b) == "x" * 20
    assert any(len(native.seqs_in(batch)) == 2 for batch in native.batches)


def test_a_long_prompt_is_prefilled_in_chunks_beside_decoding(make: Any) -> None:
    native = KvNative(n_ctx=512, n_batch=64)
    scheduler = make(native, prefill_chunk=16)
    run(scheduler, (prompt([1] * 4), 30), (prompt([3] * 100), 2))
    # While sequence 0 decodes (its sampled token in the batch), sequence 1's
    # prompt goes in chunks of at most 16 tokens.
    beside = [b for b in native.batches if any(e.token == X for e in b) and len(b) > 1]
    assert beside and all(len(b) <= 1 + 16 for b in beside)


def test_the_next_turn_reuses_its_slot_and_prefills_only_the_rest(make: Any) -> None:
    native = KvNative()
    scheduler = make(native)
    first = [1] * 20
    run(scheduler, (prompt(first), 5))
    native.batches.clear()
    run(scheduler, (prompt(first + [3] * 10), 5))
    assert native.batches[0][0].pos == 20  # the 20 shared tokens were not decoded again
    assert scheduler.stats()["reused_tokens"] == 20


def test_a_new_conversation_parks_the_idle_slot_and_a_later_turn_unparks_it(make: Any) -> None:
    native = KvNative()
    scheduler = make(native, park_budget=1 << 20)
    first = [1] * 20
    run(scheduler, (prompt(first), 5))
    run(scheduler, (prompt([3] * 30), 5))  # another conversation: slot 0 is parked
    stats = scheduler.stats()
    # Parked: the prompt and 4 of its 5 tokens (the last one sampled, never decoded).
    assert stats["parks"] == 1 and stats["slots"][0]["parked"] == 24
    assert native.cells[0] == set()  # its cells left the context
    native.batches.clear()
    run(scheduler, (prompt(first + [5] * 15), 5))  # its next turn
    stats = scheduler.stats()
    assert stats["unparks"] == 1
    assert native.batches[0][0].pos == 20  # the shared prefix came back from host memory


def test_a_breakpoint_is_snapshotted_and_restored_into_another_slot(make: Any) -> None:
    native = KvNative()
    cache = PrefixCache(budget_bytes=1 << 20, min_tokens=1)
    scheduler = make(native, cache=cache)
    prefix = [1] * 8
    marks = (Breakpoint(8),)
    cached = prompt([*prefix, 4, 4], breakpoints=marks)
    cached = LlamaPrompt(cached.conversation, "", cached.tokens, breakpoints=marks)
    run(scheduler, (cached, 3))
    assert scheduler.stats()["cache_snapshots"] == 1
    # Sharing only 8 of 30 tokens with slot 0, this takes the empty slot 1, and
    # the cache entry is copied in instead of prefilling the prefix.
    later = LlamaPrompt(cached.conversation, "", [*prefix, *([6] * 22)], breakpoints=marks)
    native.batches.clear()
    run(scheduler, (later, 3))
    assert scheduler.stats()["cache_restores"] == 1
    assert native.batches[0][0].seq_id == 1 and native.batches[0][0].pos == 8


def test_a_cancelled_generation_leaves_at_the_next_step(make: Any) -> None:
    native = KvNative()
    scheduler = make(native)

    native.gate.clear()
    native.gate_after = 3  # the third decode waits: the generation is mid-way

    async def scenario() -> list[Any]:
        generation = scheduler.submit(prompt([1] * 10), SamplingParams(max_tokens=1000))
        # Held, not left with a break: an abandoned iterator cancels the generation
        # when it is finalised, which could come before the third decode (a race
        # lost once under load).
        events = aiter(generation)
        seen = [await anext(events)]  # the first delta arrived
        assert await asyncio.to_thread(native.decoding.wait, 60)
        generation.cancel()  # the client leaves mid-decode
        native.gate.set()
        await events.aclose()  # type: ignore[attr-defined]
        return seen

    seen = asyncio.run(scenario())
    assert seen and isinstance(seen[0], TextChunk)
    stats = wait_for(scheduler, lambda s: s["running"] == 0)
    assert stats["cancelled"] == 1 and stats["tokens"] < 10
    assert native.samplers == 0 and len(native.batches) < 10


def test_thinking_past_its_budget_is_closed_by_parley(make: Any) -> None:
    native = KvNative()
    scheduler = make(native)
    (events,) = run(scheduler, (prompt([1] * 10, thinking=5), 40))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingChunk))
    assert thinking == "x" * 5
    forced = len(THINK_FORCED_CLOSE)  # the fake tokenizes a character a token
    assert text(events) == "x" * (40 - 5 - forced)
    assert events[-1] == Finished("max_tokens", 40)
    # The closing marker was fed to the model as a prompt chunk after the budget.
    fed = [e.token for batch in native.batches for e in batch if e.token == 2]
    assert len(fed) == forced


def test_parley_closing_the_reasoning_swaps_in_the_answer_grammar(make: Any) -> None:
    """A format's lazy grammar wakes when the model closes its reasoning; when
    parley closes it at the budget, the sampler is rebuilt with the grammar that
    constrains the answer from its first token."""
    answer = Grammar('root ::= "x"*', "root")
    lazy = Grammar('root ::= "</think>" lazy-rest\nlazy-rest ::= "x"*', "root", "</think>")
    lazy = Grammar(lazy.text, "root", "</think>", None, "</think>", answer)
    native = RecordingNative()
    scheduler = make(native)
    (events,) = run(scheduler, (prompt([1] * 10, thinking=5, grammar=lazy), 20))
    assert events[-1] == Finished("max_tokens", 20)
    assert native.grammars == [lazy, answer]
    assert native.samplers == 0  # the first sampler was freed when swapped, the second at the end


class RecordingNative(KvNative):
    def __init__(self) -> None:
        super().__init__()
        self.grammars: list[Any] = []

    def new_sampler(self, **options: Any) -> Any:
        self.grammars.append(options.get("grammar"))
        return super().new_sampler(**options)

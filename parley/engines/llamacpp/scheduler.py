"""Continuous batching over one llama.cpp context.

One thread runs the decode loop. Each step packs the next token of every
running sequence, plus prompt chunks of newly admitted ones, into one
``llama_batch``; each sequence has its own ``seq_id`` in a unified KV cache
and its own sampler chain. Requests join and leave between steps.

Admission (``placement.py``, ``waiting.py``): at most ``n_parallel``
sequences run; each reserves KV cells for its prompt plus its output budget
and waits while that does not fit, so a decode never runs out of cells.
Waiting requests go by priority, then arrival; beyond ``max_queue`` waiting
ones, ``submit`` raises 529. A request takes the idle slot sharing the
longest prefix with its prompt (``slots.py``), or a longer prompt-cache entry
is copied in; the other idle slots' cells are parked in host memory. Each
step's batch (``step.py``) feeds every sampled token plus prompt chunks that
end at the cache breakpoints still to be written; the sequence's KV state is
copied into the ``PrefixCache`` right after that step.

Events reach the event loop through an ``Outbox`` (``delivery.py``): once a
step, right before the next ``llama_decode``, at most every
``stream_interval`` seconds unless a job's first events, end or error wait.

Faults: a sampler that cannot be built, or a grammar step over the budget,
fails that request alone; an exception anywhere else in the loop fails the
requests it holds and the loop starts again, and after ``_MAX_FAILURES`` in a
minute it stops and the engine reports itself broken (``alive``).

Cancellation (client gone, batch cancelled) is seen at the next step: the
sequence leaves the batch and its sampler is freed; its cells stay cached
and accounted like any idle slot's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from parley.engines import admission
from parley.engines.base import (
    EngineEvent,
    Finished,
    FinishReason,
    Generation,
    SamplingParams,
    out_of_budget,
)
from parley.engines.llamacpp.delivery import Outbox
from parley.engines.llamacpp.grammar import too_slow
from parley.engines.llamacpp.jobs import Job, QueueGeneration
from parley.engines.llamacpp.ops import NativeOps
from parley.engines.llamacpp.output import Grammar, LlamaPrompt
from parley.engines.llamacpp.placement import Placement, place
from parley.engines.llamacpp.prefix_cache import PrefixCache
from parley.engines.llamacpp.sequence import Running
from parley.engines.llamacpp.slots import Slot, park, slot_stats
from parley.engines.llamacpp.step import plan_step
from parley.engines.llamacpp.waiting import WaitQueue
from parley.errors import EngineError, ParleyError

log = logging.getLogger("parley.engine.scheduler")


class BatchScheduler:
    def __init__(
        self,
        native: NativeOps,
        *,
        n_parallel: int,
        max_queue: int,
        prefill_chunk: int,
        cache: PrefixCache | None = None,
        queue_timeout: float = 300.0,
        stream_interval: float = 0.0,
        park_budget: int = 0,
        grammar_step_budget: float = 3.0,
    ) -> None:
        self._native = native
        self._park_budget = park_budget
        self._cache = cache
        self._queue_timeout = queue_timeout
        self._n_parallel = n_parallel
        self._max_queue = max_queue
        self._n_batch = native.n_batch
        self._prefill_chunk = max(1, min(prefill_chunk, self._n_batch))
        self._capacity = native.n_ctx
        self._slots = [Slot(i) for i in range(n_parallel)]
        self._running: list[Running] = []
        self._waiting = WaitQueue()
        self._cond = threading.Condition()
        self._stopping = False
        self._counters = {
            "completed": 0,
            "cancelled": 0,
            "failed": 0,
            "rejected": 0,
            "tokens": 0,
            "timed_out": 0,  # waited longer than the queue timeout
            "cache_restores": 0,  # prompt-cache entries copied into a sequence
            "cache_snapshots": 0,  # sequences copied into the prompt cache
            "parks": 0,  # idle slots moved out of the context
            "unparks": 0,  # parked slots copied back for a request sharing their prefix
            "reused_tokens": 0,  # prompt tokens whose cells a slot already held (not prefilled)
        }
        self._outbox = Outbox(stream_interval)  # a step's events, in one wake-up per loop
        self._grammar_step_budget = grammar_step_budget
        self._admitting: Job | None = None
        self._failures: list[float] = []  # when the loop last failed outside a step
        self.dead: str | None = None  # why the loop gave up; the engine is then unhealthy
        self._thread = threading.Thread(target=self._run, name="parley-scheduler", daemon=True)

    # --- the event-loop side -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The decode loop runs (or has not been started yet)."""
        return self.dead is None and (self._thread.is_alive() or not self._thread.ident)

    def submit(self, prompt: LlamaPrompt, params: SamplingParams) -> Generation:
        if not self.alive:
            raise EngineError(f"the engine is not running: {self.dead or 'its thread ended'}")
        job = Job(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        if self._cache is not None and prompt.breakpoints:
            job.cache = self._cache.plan(prompt.tokens, prompt.breakpoints)
        with self._cond:
            # Jobs submitted since the last step may still find a free slot.
            if len(self._waiting) + len(self._running) >= self._n_parallel + self._max_queue:
                self._counters["rejected"] += 1
                self._release_plan(job)
                raise admission.queue_full()
            self._waiting.push(job)
            self._cond.notify_all()
        return QueueGeneration(job, self._on_cancel)

    def _release_plan(self, job: Job) -> None:
        if self._cache is not None:
            self._cache.release(job.cache)

    def _on_cancel(self, job: Job) -> None:
        with self._cond:
            self._counters["cancelled"] += 1
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            # KV positions are read only while nothing decodes (no race with the thread).
            idle = not self._running
            return {
                "waiting": self._waiting.live(),
                "running": len(self._running),
                **self._counters,
                "kv_capacity": self._capacity,
                **slot_stats(self._slots, self._native if idle else None),
            }

    # --- the scheduler thread ------------------------------------------------

    def _run(self) -> None:
        """The thread: the decode loop, restarted when it fails outside a step.

        A failure fails the requests in flight and waiting (they cannot be trusted
        to be consistent) and the loop starts again; after ``_MAX_FAILURES``
        failures within a minute it gives up and the engine reports itself
        unhealthy instead of spinning.
        """
        while True:
            try:
                self._loop()
                return
            except Exception as exc:
                log.exception("the decode loop failed; its requests fail and it restarts")
                now = time.monotonic()
                self._failures = [t for t in self._failures if now - t < 60.0] + [now]
                error = EngineError("the engine failed; retry the request")
                with self._cond:
                    if self._admitting is not None:
                        self._release_plan(self._admitting)
                        self._outbox.end(self._admitting, error)
                        self._admitting = None
                    self._fail_all(error, waiting=True)
                    if len(self._failures) >= _MAX_FAILURES:
                        self.dead = f"the decode loop failed {_MAX_FAILURES} times in a minute"
                        log.error("the decode loop stopped for good", extra={"error": repr(exc)})
                self._outbox.flush()
                if self.dead is not None:
                    return

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._reap_cancelled()
                self._admit()
                while not self._running and not self._stopping:
                    self._outbox.flush()
                    self._cond.wait()
                    self._reap_cancelled()
                    self._admit()
                if self._stopping:
                    self._fail_all(EngineError("the server is shutting down"))
                    self._outbox.flush()
                    return
            try:
                self._step()  # flushes the previous step's events itself
            except ParleyError as exc:
                log.error("batch step failed", extra={"error": exc.message})
                with self._cond:
                    self._fail_all(exc)
                self._outbox.flush()
            except Exception:
                log.exception("batch step failed")
                with self._cond:
                    self._fail_all(EngineError("the engine failed while decoding"))
                self._outbox.flush()

    def _reap_cancelled(self) -> None:
        # Runs before every step: rebuild the heap only when something left it.
        for job in self._waiting.overdue(time.monotonic() - self._queue_timeout):
            self._counters["timed_out"] += 1
            self._outbox.end(job, admission.waited_too_long(self._queue_timeout))
        for job in self._waiting.reap():
            self._release_plan(job)
        for run in [r for r in self._running if r.job.cancelled.is_set()]:
            self._release(run)

    def _admit(self) -> None:
        while (job := self._waiting.first()) is not None and len(self._running) < self._n_parallel:
            placement = place(
                job,
                self._slots,
                self._running,
                capacity=self._capacity,
                parking=self._park_budget > 0,
            )
            for victim in placement.evict:
                self._native.forget(victim.seq_id)
                victim.cached = []
            if not placement.fits:
                return  # wait for running sequences to free their cells
            self._waiting.pop()
            self._admitting = job  # neither waiting nor running until admitted
            self._start(job, placement)
            self._admitting = None

    def _start(self, job: Job, placement: Placement) -> None:
        """Carry a placement out: park, restore, build the sampler, join the batch."""
        slot, tokens, reuse = placement.slot, placement.tokens, placement.reuse
        if self._park_budget:
            # Before any copy into the slot: a state copied into an emptier context
            # keeps its cells in position order, and the order in which attention
            # sums cells changes the floats (a greedy answer could change). Parking
            # after the admission loop was measured to break that.
            for other in placement.idle:
                if park(self._native, other, self._slots, self._park_budget):
                    self._counters["parks"] += 1
        parked, slot.parked = slot.parked, None
        if placement.restore is not None:
            restore = placement.restore
            self._native.forget(slot.seq_id)
            if self._native.restore_seq(slot.seq_id, restore.state, restore.nbytes):
                self._counters["cache_restores"] += 1
            else:
                log.warning("prompt cache entry could not be restored; prefilling instead")
                reuse = 0
        elif parked is not None and reuse > 0:
            if self._native.restore_seq(slot.seq_id, *parked):
                self._counters["unparks"] += 1
            else:
                reuse = 0  # no room for its cells now: prefilled instead
        self._release_plan(job)
        self._native.forget(slot.seq_id, reuse)
        self._counters["reused_tokens"] += reuse
        slot.cached = tokens[:reuse]
        slot.used_at = time.monotonic()
        params = job.params
        try:
            sampler = self._native.new_sampler(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                seed=params.seed,
                grammar=job.prompt.grammar,
            )
        except ParleyError as exc:  # this request's sampler: it fails alone
            log.error("a sampler could not be built", extra={"error": exc.message})
            self._counters["failed"] += 1
            self._outbox.end(job, exc)
            return
        slot.busy = True
        run = Running.begin(job, slot, sampler, placement.budget, tokens[reuse:])
        self._snapshot(run)
        self._running.append(run)
        if placement.budget == 0:
            self._finish(run, out_of_budget(0, params.max_tokens))

    def _step(self) -> None:
        with self._cond:
            running = list(self._running)
        step = plan_step(running, n_batch=self._n_batch, prefill_chunk=self._prefill_chunk)
        if not step.entries:
            self._outbox.flush()
            return
        # The previous steps' events go to the event loop now, so it handles them
        # while llama_decode runs without the GIL, not while this thread builds
        # the batch (which would make the two threads take turns on the GIL).
        if self._outbox.due:
            self._outbox.flush()
        self._native.decode(step.entries)
        for run in step.decoded():
            self._snapshot(run)
        for index, run in step.samplers:
            if run.job.cancelled.is_set():
                continue
            if run.job.prompt.grammar is None:
                self._accept(run, self._native.sample(run.sampler, index))
                continue
            started = time.perf_counter()
            token = self._native.sample(run.sampler, index)
            took = time.perf_counter() - started
            if took > self._grammar_step_budget:
                self._fail(run, too_slow(took, self._grammar_step_budget))
                continue
            self._accept(run, token)

    def _snapshot(self, run: Running) -> None:
        """Copy the sequence's KV state into the prompt cache at a breakpoint it reached."""
        cache, done = self._cache, len(run.slot.cached)
        while run.writes and run.writes[0].pos <= done:
            point = run.writes.pop(0)
            if cache is None or point.pos != done:
                continue
            prefix = run.slot.cached
            if cache.wants(prefix):
                state, nbytes = self._native.save_seq(run.slot.seq_id)
                cache.put(prefix, state, nbytes, point.ttl)
                with self._cond:
                    self._counters["cache_snapshots"] += 1
            else:
                cache.put(prefix, None, 0, point.ttl)  # refreshes the entry already there

    def _accept(self, run: Running, token: int) -> None:
        events, end = run.accept(self._native, token)
        self._emit(run, events)
        if end is not None:
            self._finish(run, *end)
        elif run.swap is not None:
            self._swap_sampler(run, run.swap)

    def _swap_sampler(self, run: Running, grammar: Grammar) -> None:
        """Constrain the rest of the sequence by ``grammar`` (a new sampler)."""
        params = run.job.params
        run.swap = None
        try:
            sampler = self._native.new_sampler(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                seed=params.seed,
                grammar=grammar,
            )
        except ParleyError as exc:
            self._fail(run, exc)
            return
        self._native.free_sampler(run.sampler)
        run.sampler = sampler

    def _emit(self, run: Running, events: list[EngineEvent]) -> None:
        first = bool(events) and not run.started
        run.started = run.started or first
        self._outbox.add(run.job, *events, urgent=first)

    def _finish(self, run: Running, reason: FinishReason, stop: str | None = None) -> None:
        self._outbox.end(run.job, Finished(reason, run.produced, stop))
        with self._cond:
            self._counters["completed"] += 1
            self._release(run)

    def _fail(self, run: Running, error: ParleyError) -> None:
        """End one sequence with an error; the others run on."""
        log.warning("a request failed while decoding", extra={"error": error.message})
        self._outbox.end(run.job, error)
        with self._cond:
            self._counters["failed"] += 1
            self._release(run)

    def _release(self, run: Running) -> None:
        """Take a sequence out of the batch; its cells stay cached in its slot."""
        if run in self._running:
            self._running.remove(run)
            self._counters["tokens"] += run.produced
            self._native.free_sampler(run.sampler)
            run.slot.busy = False
            self._cond.notify_all()

    def _fail_all(self, error: ParleyError, *, waiting: bool = False) -> None:
        for run in list(self._running):
            self._outbox.end(run.job, error)
            self._counters["failed"] += 1
            self._native.forget(run.slot.seq_id)
            run.slot.cached = []
            self._release(run)
        if self._stopping or waiting:
            for job in self._waiting.drain():
                self._release_plan(job)
                self._outbox.end(job, error)


_MAX_FAILURES = 5

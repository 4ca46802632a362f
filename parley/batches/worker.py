"""The batch worker pool: runs stored batch requests through the Messages service.

One dispatcher task, owned by the app lifespan, claims pending requests (up to
``concurrency`` in flight, and half as many again claimed ahead, so the pool
does not drain while a claim is on its way) and runs each as its own task
through the same path as ``/v1/messages`` (``MessagesService.open``), at batch
priority (interactive requests are admitted first). Outcomes are written by
one writer task, all those ready at once (each request's result together with
its move out of ``running``); until then the request stays ``running`` in the
database.
Cancel and expiry stop in-flight requests, which then record
``canceled`` / ``expired``; a request stopped by shutdown goes back to
``pending`` (and one interrupted by a crash is found ``running`` at the next
start and retried), so every request ends with exactly one result.

Batch requests are metered like interactive ones, on their owner's buckets
(the owner is the SHA-256 of the creating key, as the limiter keys them): a
request is taken from the bucket before it is rendered, its input tokens
once counted, its output tokens when it ends. A batch is asynchronous, so
an owner whose bucket is empty is not refused: its requests go back to
``pending`` without costing an attempt and its batches are passed over
until the bucket has refilled, while other owners' work goes on.

Several replicas may share one database (PostgreSQL). A claim is a lease
(``queue.py``); a heartbeat task renews this replica's leases every third
of the lease, and learns of the batches another replica was asked to cancel
whose requests run here. Another replica's new work wakes the dispatcher
through ``LISTEN/NOTIFY`` (``parley.db.listen``), the poll every ``tick``
remaining the fallback.

A request is started at most ``max_attempts`` times (the store ends it
``errored`` after that). The requests that were running when the server
died may be what killed it, so after a restart each runs alone first: a
request that crashes the engine then takes no other request down with it.
So does a request taken over from another replica whose lease on it ran out
(``suspect``: that replica may have died of it), whichever replica claims it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Literal

import anyio

from parley.batches.store import BatchStore, Claimed, RequestStatus
from parley.db.database import WORK_CHANNEL
from parley.errors import OverloadedError, ParleyError, RateLimitError, StorageError
from parley.ratelimit import Meter, RateLimiter
from parley.service import MessagesService
from parley.wire.batches import CANCELED, EXPIRED, ErroredResult, SucceededResult

if TYPE_CHECKING:
    from parley.db.listen import Listener

log = logging.getLogger("parley.batches")

BATCH_PRIORITY = 10  # below interactive traffic (0)

Stop = Literal["canceled", "expired"]


def _failed(what: str, **extra: object) -> None:
    """Log the exception being handled: one line when the database is unavailable
    (it is retried, and an outage would repeat a traceback every tick), else with
    its traceback (a bug)."""
    exc = sys.exc_info()[1]
    if isinstance(exc, StorageError):
        log.warning(what, extra={**extra, "error": exc.message})
    else:
        log.exception(what, extra=extra)


class BatchWorker:
    def __init__(
        self,
        store: BatchStore,
        service: MessagesService,
        *,
        concurrency: int,
        retention: float,
        tick: float = 1.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._store = store
        self._service = service
        self._limiter = limiter or RateLimiter()  # none given: no limits
        # Owners refused by their rate limit -> input tokens their next request needs;
        # their batches are passed over until the limiter says that fits.
        self._waiting: dict[str, int] = {}
        self._deferred: list[Claimed] = []  # claimed, not run: to give back unspent
        # Claimed ahead, started as the pool frees up: the pool does not drain
        # while the next claim is on its way (a round trip to a shared database).
        self._ready: collections.deque[Claimed] = collections.deque()
        self._alone = -1  # the suspect running alone, if any
        self._suspects_seen = False  # suspects were waiting when last asked
        self._suspects_checked_at = -float("inf")
        self._on_engine: set[int] = set()  # row ids the engine has been given
        self._concurrency = max(1, concurrency)
        self._ahead = self._concurrency // 2  # requests claimed ahead at most
        self._retention = retention
        self._tick = tick
        self._wake = asyncio.Event()
        self._tasks: dict[int, tuple[asyncio.Task[None], int]] = {}  # row id -> (task, batch)
        self._stops: dict[int, Stop] = {}  # row id -> why it was stopped
        self._main: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._outcomes: list[tuple[Claimed, RequestStatus, str]] = []
        self._written = asyncio.Event()
        self._closing = False
        self._stopping = False  # no request starts any more
        self._backoff = 0.0
        self._retry_after = 1.0  # seconds before the database is tried again after a failure

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="parley-batch-worker")
        self._writer = asyncio.create_task(self._write_outcomes(), name="parley-batch-writer")
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="parley-batch-leases")
        if self._store.shared:
            from parley.db.listen import Listener  # psycopg: only with PostgreSQL

            loop = asyncio.get_running_loop()

            def wake() -> None:  # (on the listener's thread)
                loop.call_soon_threadsafe(self.wake)

            self._listener = Listener(self._store.url, WORK_CHANNEL, wake)
            self._listener.start()

    async def stop(self) -> None:
        """Stop claiming; in-flight requests go back to pending for the next start,
        finished ones are written before this returns."""
        self._stopping = True
        if self._listener is not None:
            await anyio.to_thread.run_sync(self._listener.stop)
            self._listener = None
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        tasks = [task for task, _ in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._deferred.extend(self._ready)  # never started: given back unspent
        self._ready.clear()
        if self._deferred:
            with contextlib.suppress(Exception):  # else they are found running at start-up
                await self._give_back()
        self._closing = True
        self._written.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._heartbeat is not None:  # last: the leases held until results are written
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    def wake(self) -> None:
        self._wake.set()

    def stop_batch(self, batch_seq: int, why: Stop) -> None:
        """Stop the batch's in-flight requests; each records ``why`` as its result
        (as do those claimed ahead)."""
        for item in [item for item in self._ready if item.batch_seq == batch_seq]:
            self._ready.remove(item)
            self._record(item, why, CANCELED if why == "canceled" else EXPIRED)
        for row_id, (task, seq) in list(self._tasks.items()):
            if seq == batch_seq and row_id not in self._stops:
                self._stops[row_id] = why
                task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # --- the dispatcher ------------------------------------------------------------

    async def _run(self) -> None:
        recovered = await anyio.to_thread.run_sync(self._store.recover)
        self._suspects_seen = bool(recovered.resumed)
        if recovered.resumed:
            log.info(
                "batch requests resumed after a restart; each runs alone first",
                extra={"requests": len(recovered.resumed)},
            )
        if recovered.exhausted:
            log.warning(
                "batch requests ended errored: each of their attempts was cut short",
                extra={"exhausted": recovered.exhausted, "max_attempts": self._store.max_attempts},
            )
        loop = asyncio.get_running_loop()
        next_housekeeping = 0.0
        while True:
            if loop.time() >= next_housekeeping:
                await self._housekeeping()
                next_housekeeping = loop.time() + self._tick
            if self._deferred and self._backoff == 0.0:
                await self._give_back()
            claimed: list[Claimed] = []
            if self._backoff == 0.0:
                try:
                    claimed = await self._claim()
                except Exception:  # the database is unwell (full disk...): retry later
                    _failed("could not claim batch requests; retrying")
                    self._backoff = self._retry_after
            self._ready.extend(claimed)
            self._fill()
            if self._deferred and self._backoff == 0.0:
                continue  # give them back now; their owners are passed over meanwhile
            if claimed and self._held() < self._concurrency + self._ahead:
                continue
            self._wake.clear()
            timeout = self._backoff or self._next_wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._backoff = 0.0

    async def _claim(self) -> list[Claimed]:
        skip = self._waiting_owners()
        if self._alone in self._tasks:
            return []  # a suspect runs alone
        held = self._held()
        free = self._concurrency + self._ahead - held
        # Claim in groups (half the pool at least): one statement, many requests.
        if free <= 0 or (free < max(1, self._concurrency // 2) and held):
            return []
        # Requests that were running when their process died (found at start-up,
        # or taken over from a replica whose lease ran out): claimed one at a
        # time, each alone once the pool has drained, so a pill among them costs
        # the others no attempt. One whose owner waits for its rate limit is
        # passed over meanwhile (a suspect never stalls the worker).
        if await self._suspects_wait(skip):
            if held:
                return []  # the pool drains first
            claimed = await anyio.to_thread.run_sync(
                lambda: self._store.claim(1, skip_owners=skip, suspects=True)
            )
            if claimed:
                self._alone = claimed[0].row_id
                return claimed
        return await anyio.to_thread.run_sync(
            lambda: self._store.claim(free, skip_owners=skip, suspects=False)
        )

    async def _suspects_wait(self, skip: list[str]) -> bool:
        """Whether suspects wait: asked of the database once a tick, and at once
        after a suspect was claimed or a recovery found some (a round trip before
        every group claim would cost a shared database a fifth of its throughput)."""
        now = asyncio.get_running_loop().time()
        if self._suspects_seen or now >= self._suspects_checked_at + self._tick:
            self._suspects_checked_at = now
            self._suspects_seen = await anyio.to_thread.run_sync(
                lambda: self._store.has_suspects(skip)
            )
        return self._suspects_seen

    def _admitted(self, item: Claimed) -> bool:
        """Take a request from the owner's bucket; when it is empty, the owner waits."""
        if item.owner in self._waiting:
            return False
        try:
            self._limiter.admit_request(item.owner)
        except RateLimitError:
            self._waiting[item.owner] = 1
            return False
        return True

    def _waiting_owners(self) -> list[str]:
        """The owners still waiting (those whose next request now fits stop waiting)."""
        for owner, tokens in list(self._waiting.items()):
            if self._limiter.ready_in(owner, tokens) == 0:
                del self._waiting[owner]
        return list(self._waiting)

    def _next_wait(self) -> float:
        """Until the next tick, or sooner when a waiting owner's bucket has refilled."""
        waits = [self._limiter.ready_in(o, n) for o, n in self._waiting.items()]
        return max(0.01, min([self._tick, *waits]))

    async def _give_back(self) -> None:
        """Requests claimed but not run (their owner must wait) go back to pending,
        their attempt unspent; kept for the next pass if the database fails."""
        items, self._deferred = self._deferred, []
        try:
            await anyio.to_thread.run_sync(lambda: self._store.release(items))
        except Exception:
            _failed("could not give batch requests back; retrying")
            self._deferred = items + self._deferred
            self._backoff = self._retry_after

    def _held(self) -> int:
        """Requests this worker has claimed and not finished: running or claimed ahead."""
        return len(self._tasks) + len(self._ready)

    def _fill(self) -> None:
        """Start requests claimed ahead while the pool has room (an owner whose
        bucket is empty waits: its request goes back)."""
        while self._ready and len(self._tasks) < self._concurrency and not self._stopping:
            item = self._ready.popleft()
            if self._admitted(item):
                self._spawn(item)
            else:
                self._deferred.append(item)

    def _spawn(self, item: Claimed) -> None:
        task = asyncio.create_task(self._process(item))
        self._tasks[item.row_id] = (task, item.batch_seq)

        def done(_: asyncio.Task[None]) -> None:
            self._done(item.row_id)

        task.add_done_callback(done)

    def _done(self, row_id: int) -> None:
        self._tasks.pop(row_id, None)
        self._stops.pop(row_id, None)
        self._on_engine.discard(row_id)
        self._fill()
        self._wake.set()

    async def _housekeeping(self) -> None:
        try:
            reclaimed = await anyio.to_thread.run_sync(self._store.reclaim)
            self._suspects_seen |= bool(reclaimed.resumed)
            if reclaimed.resumed or reclaimed.exhausted:
                log.info(
                    "batch requests taken over: the lease of the replica running them ran out",
                    extra={"requests": len(reclaimed.resumed), "exhausted": reclaimed.exhausted},
                )
            for seq in await anyio.to_thread.run_sync(self._store.expire):
                self.stop_batch(seq, "expired")
            purged = await anyio.to_thread.run_sync(self._store.purge, self._retention)
            if purged:
                log.info("batches past retention deleted", extra={"batches": purged})
        except Exception:
            _failed("batch housekeeping failed")

    async def _renew_leases(self) -> None:
        """Every third of the lease: this replica's leases are extended (a failed
        renewal is tried again at the next beat; two missed in a row and another
        replica may take the requests over, which the fencing makes safe)."""
        while True:
            await asyncio.sleep(self._store.lease / 3)
            if not (self._tasks or self._ready or self._outcomes or self._deferred):
                continue  # (no lease held)
            try:
                canceling = await anyio.to_thread.run_sync(self._store.renew)
            except Exception:
                _failed("could not renew batch leases")
                continue
            for seq in canceling:  # canceled through another replica
                self.stop_batch(seq, "canceled")

    # --- one request -----------------------------------------------------------------

    async def _process(self, item: Claimed) -> None:
        try:
            status, result = await self._execute(item)
        except OverloadedError:
            # The engine's queue is full (interactive traffic): try again shortly.
            self._deferred.append(item)
            self._backoff = 0.5
            return
        except RateLimitError:  # its input tokens do not fit the owner's bucket yet
            self._deferred.append(item)
            self._wake.set()
            return
        except asyncio.CancelledError:
            why = self._stops.get(item.row_id)
            with anyio.CancelScope(shield=True):
                if why is None:  # shutdown: run it again next time, at the cost of an attempt
                    spent = item.row_id in self._on_engine  # (unless the engine never had it)
                    with contextlib.suppress(Exception):  # else it is found running at start-up
                        await anyio.to_thread.run_sync(
                            lambda: self._store.release([item], spent=spent)
                        )
                else:
                    self._record(item, why, CANCELED if why == "canceled" else EXPIRED)
            raise
        self._record(item, status, result)

    def _record(self, item: Claimed, status: RequestStatus, result: str) -> None:
        """Hand an outcome to the writer task."""
        self._outcomes.append((item, status, result))
        self._written.set()

    async def _write_outcomes(self) -> None:
        while True:
            if not self._outcomes:
                if self._closing:
                    return
                await self._written.wait()
                self._written.clear()
                continue
            outcomes, self._outcomes = self._outcomes, []
            try:
                await anyio.to_thread.run_sync(self._store.finish, outcomes)
            except Exception:
                # Kept and written again shortly (a full disk may free up); if the
                # process ends first, the requests are still running in the
                # database and run again at the next start.
                _failed("could not record batch results", n=len(outcomes))
                self._outcomes = outcomes + self._outcomes
                if self._closing:
                    return
                await asyncio.sleep(self._retry_after)

    async def _execute(self, item: Claimed) -> tuple[RequestStatus, str]:
        # The owner's request was taken from its bucket when it was claimed (_admitted).
        meter = Meter(self._limiter, item.owner, request_taken=True)
        try:
            try:
                run = await self._service.open(
                    item.params.encode(), meter, priority=BATCH_PRIORITY, batch=True
                )
            except RateLimitError:  # its input tokens: the owner waits until they fit
                need = max(meter.input_tokens, self._waiting.get(item.owner, 1))
                self._waiting[item.owner] = need
                raise
            self._on_engine.add(item.row_id)
            message = await run.message()
        except (OverloadedError, RateLimitError):
            raise
        except ParleyError as exc:
            return "errored", ErroredResult.of(exc.error_type, exc.message).model_dump_json()
        message.usage.service_tier = "batch"
        return "succeeded", SucceededResult(message=message).model_dump_json()

"""The batch worker pool: runs stored batch requests through the Messages service.

One dispatcher task, owned by the app lifespan, claims pending requests (up to
``concurrency`` in flight) and runs each as its own task through the same path
as ``/v1/messages``, at batch priority (interactive requests are admitted
first). Each outcome is written with the request's state change in one
transaction. Outcomes are written by one writer task, all those
ready in one transaction (each request's result together with its move out
of ``running``); until then the request stays ``running`` in the database.
Cancel and expiry stop in-flight requests, which then record
``canceled`` / ``expired``; a request stopped by shutdown goes back to
``pending`` (and one interrupted by a crash is found ``running`` at the next
start and retried), so every request ends with exactly one result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Literal

import anyio

from parley.api.http import parse_body
from parley.batches.store import BatchStore, Claimed, RequestStatus
from parley.errors import InvalidRequestError, OverloadedError, ParleyError
from parley.service import MessagesService
from parley.wire import requests as wr

log = logging.getLogger("parley.batches")

BATCH_PRIORITY = 10  # below interactive traffic (0)

Stop = Literal["canceled", "expired"]


class BatchWorker:
    def __init__(
        self,
        store: BatchStore,
        service: MessagesService,
        *,
        concurrency: int,
        retention: float,
        tick: float = 1.0,
    ) -> None:
        self._store = store
        self._service = service
        self._concurrency = max(1, concurrency)
        self._retention = retention
        self._tick = tick
        self._wake = asyncio.Event()
        self._tasks: dict[int, tuple[asyncio.Task[None], int]] = {}  # row id -> (task, batch)
        self._stops: dict[int, Stop] = {}  # row id -> why it was stopped
        self._main: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outcomes: list[tuple[Claimed, RequestStatus, str]] = []
        self._written = asyncio.Event()
        self._closing = False
        self._backoff = 0.0
        self._retry_after = 1.0  # seconds before the database is tried again after a failure

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="parley-batch-worker")
        self._writer = asyncio.create_task(self._write_outcomes(), name="parley-batch-writer")

    async def stop(self) -> None:
        """Stop claiming; in-flight requests go back to pending for the next start,
        finished ones are written before this returns."""
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        tasks = [task for task, _ in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closing = True
        self._written.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    def wake(self) -> None:
        self._wake.set()

    def stop_batch(self, batch_seq: int, why: Stop) -> None:
        """Stop the batch's in-flight requests; each records ``why`` as its result."""
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
        if recovered:
            log.info("batch requests resumed after a restart", extra={"requests": recovered})
        loop = asyncio.get_running_loop()
        next_housekeeping = 0.0
        while True:
            if loop.time() >= next_housekeeping:
                await self._housekeeping()
                next_housekeeping = loop.time() + self._tick
            free = self._concurrency - len(self._tasks)
            claimed: list[Claimed] = []
            # Claim in groups (half the pool at least): one transaction, many requests.
            enough = free >= max(1, self._concurrency // 2) or not self._tasks
            if free > 0 and enough and self._backoff == 0.0:
                try:
                    claimed = await anyio.to_thread.run_sync(self._store.claim, free)
                except Exception:  # the database is unwell (full disk...): retry later
                    log.exception("could not claim batch requests; retrying")
                    self._backoff = self._retry_after
            for item in claimed:
                self._spawn(item)
            if claimed and len(self._tasks) < self._concurrency:
                continue
            self._wake.clear()
            timeout = self._backoff or self._tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._backoff = 0.0

    def _spawn(self, item: Claimed) -> None:
        task = asyncio.create_task(self._process(item))
        self._tasks[item.row_id] = (task, item.batch_seq)

        def done(_: asyncio.Task[None]) -> None:
            self._done(item.row_id)

        task.add_done_callback(done)

    def _done(self, row_id: int) -> None:
        self._tasks.pop(row_id, None)
        self._stops.pop(row_id, None)
        self._wake.set()

    async def _housekeeping(self) -> None:
        try:
            for seq in await anyio.to_thread.run_sync(self._store.expire):
                self.stop_batch(seq, "expired")
            purged = await anyio.to_thread.run_sync(self._store.purge, self._retention)
            if purged:
                log.info("batches past retention deleted", extra={"batches": purged})
        except Exception:
            log.exception("batch housekeeping failed")

    # --- one request -----------------------------------------------------------------

    async def _process(self, item: Claimed) -> None:
        try:
            status, result = await self._execute(item)
        except OverloadedError:
            # The engine's queue is full (interactive traffic): try again shortly.
            await anyio.to_thread.run_sync(self._store.release, item)
            self._backoff = 0.5
            return
        except asyncio.CancelledError:
            why = self._stops.get(item.row_id)
            with anyio.CancelScope(shield=True):
                if why is None:  # shutdown: run it again next time
                    await anyio.to_thread.run_sync(self._store.release, item)
                else:
                    self._record(item, why, json.dumps({"type": why}))
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
                log.exception("could not record batch results", extra={"n": len(outcomes)})
                self._outcomes = outcomes + self._outcomes
                if self._closing:
                    return
                await asyncio.sleep(self._retry_after)

    async def _execute(self, item: Claimed) -> tuple[RequestStatus, str]:
        service = self._service
        try:
            body = item.params.encode()
            async with service.offload.slot(len(body)):
                req = await parse_body(wr.CreateMessageRequest, body, service.offload)
                if req.stream:
                    raise InvalidRequestError(
                        "stream: streaming is not supported in message batches"
                    )
                prepared = await service.prepare(req, size=len(body))
            params = dataclasses.replace(prepared.params, priority=BATCH_PRIORITY)
            generation, state = service.submit(dataclasses.replace(prepared, params=params))
            message = await service.run(generation, state)
        except OverloadedError:
            raise
        except ParleyError as exc:
            error = {
                "type": "error",
                "error": {"type": exc.error_type, "message": exc.message},
                "request_id": None,
            }
            return "errored", json.dumps({"type": "errored", "error": error})
        message.usage.service_tier = "batch"
        return "succeeded", '{"type":"succeeded","message":' + message.model_dump_json() + "}"

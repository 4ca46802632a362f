"""ASGI middleware: a ``request-id`` on every response, one access-log line, and
a bound on how long a response may wait for a client that does not read.

A client that stops reading makes the server's socket buffer fill; uvicorn
then holds each ``send`` until the buffer drains. A send that waits longer
than ``slow_reader_timeout`` ends the response (the connection is closed and
the generation behind it cancelled), so a stalled reader holds neither a
slot nor a growing buffer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.ids import request_id

log = logging.getLogger("parley.access")


@dataclass(eq=False)
class _Response:
    task: asyncio.Task[Any]
    since: float | None = None  # when the send under way started
    overdue: bool = False


class SlowReaders:
    """One timer for all responses: cancels those whose send has waited longer
    than ``timeout`` (the per-token send path only notes when a send starts and
    ends). Started and stopped by the app's lifespan."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.responses: set[_Response] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="parley-slow-readers"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = loop.time()
            for response in list(self.responses):
                since = response.since
                if since is not None and now - since > self.timeout:
                    response.overdue = True
                    response.task.cancel()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, slow_readers: SlowReaders) -> None:
        self.app = app
        self.slow_readers = slow_readers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 0
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        tracked = _Response(task)
        self.slow_readers.responses.add(tracked)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"request-id", rid.encode()))
                rate = scope["state"].get("rate_limited")
                if rate is not None:  # set for authenticated requests when limits apply
                    present = {name.lower() for name, _ in headers}
                    headers.extend(
                        (name.encode(), value.encode())
                        for name, value in rate().items()
                        if name.encode() not in present
                    )
                message = {**message, "headers": headers}
                await send(message)
                return
            tracked.since = loop.time()
            try:
                await send(message)
            finally:
                tracked.since = None

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if not tracked.overdue:
                raise
            task.uncancel()
            log.warning(
                "client stopped reading; response abandoned",
                extra={"request_id": rid, "seconds": self.slow_readers.timeout},
            )
        finally:
            self.slow_readers.responses.discard(tracked)
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

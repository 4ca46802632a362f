"""ASGI middleware: a ``request-id`` on every response, one access-log line, and
a bound on how long a response may wait for a client that does not read.

A client that stops reading makes the server's socket buffer fill; uvicorn
then holds each ``send`` until the buffer drains. A send that waits longer
than ``slow_reader_timeout`` ends the response (the connection is closed and
the generation behind it cancelled), so a stalled reader holds neither a
slot nor a growing buffer."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.ids import request_id

log = logging.getLogger("parley.access")


class SlowReader(Exception):
    """The client did not read the response for too long."""


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, slow_reader_timeout: float = 60.0) -> None:
        self.app = app
        self.slow_reader_timeout = slow_reader_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"request-id", rid.encode()))
                message = {**message, "headers": headers}
                await send(message)
                return
            try:
                async with asyncio.timeout(self.slow_reader_timeout):
                    await send(message)
            except TimeoutError:
                raise SlowReader(rid) from None

        try:
            await self.app(scope, receive, send_with_id)
        except SlowReader:
            log.warning(
                "client stopped reading; response abandoned",
                extra={"request_id": rid, "seconds": self.slow_reader_timeout},
            )
        finally:
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

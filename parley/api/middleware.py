"""ASGI middleware: a ``request-id`` on every response, one access-log line, and
a bound on how long a response may wait for a client that does not read.

The access line (logger ``parley.access``) says what happened to a request:
method, path, status, milliseconds, and what handlers noted on its ``Access``
(``scope["state"]["access"]``): the model, the stream flag, the usage
(input, cache-read, cache-creation and output tokens), time to first token and
tokens a second, and for an error response its type and message. Never prompt
text: error messages name parameters and paths, not content. A client that left
before its response ended is logged ``client disconnected``, with ``status=-``
when nothing reached it.

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

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.ids import request_id
from parley.streaming.state import MessageState

log = logging.getLogger("parley.access")

_ERROR_CHARS = 200  # of an error's message in the access line


@dataclass(eq=False)
class Access:
    """What a handler tells the access line about its request."""

    model: str | None = None
    stream: bool | None = None
    state: MessageState | None = None  # a Messages run: its usage and timings
    input_tokens: int | None = None  # count_tokens: the count
    error_type: str | None = None
    error: str | None = None
    hint: str | None = None  # for the operator, not the client: what would have helped

    def fields(self, started: float, ended: float) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.model is not None:
            out["model"] = self.model
        if self.stream is not None:
            out["stream"] = str(self.stream).lower()
        if self.input_tokens is not None:
            out["input_tokens"] = self.input_tokens
        state = self.state
        if state is not None:
            out["input_tokens"] = state.input_tokens
            out["cache_read"] = state.cache.read
            out["cache_creation"] = state.cache.created
            if state.stop_reason is not None:  # output is counted when a run ends
                out["output_tokens"] = state.output_tokens
                out["stop_reason"] = state.stop_reason
            first = state.first_output_at
            if first is not None:
                out["ttft_ms"] = round((first - started) * 1000, 1)
                # The tokens after the first, over the time they took: decode speed.
                if state.stop_reason is not None and state.output_tokens > 1 and ended > first:
                    out["tok_s"] = round((state.output_tokens - 1) / (ended - first), 1)
            if state.failure is not None and self.error_type is None:  # after a 200 began
                self.error_type, self.error = state.failure.type, state.failure.message
        if self.error_type is not None:
            out["error_type"] = self.error_type
            message = self.error or ""
            if len(message) > _ERROR_CHARS:
                message = message[: _ERROR_CHARS - 1] + "…"
            out["error"] = message
        if self.hint is not None:
            out["hint"] = self.hint
        return out


def access_of(request: Request) -> Access:
    """The request's ``Access`` (a fresh one, unlogged, outside the middleware)."""
    found = request.scope.get("state", {}).get("access")
    return found if isinstance(found, Access) else Access()


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
        access = Access()
        scope.setdefault("state", {}).update(request_id=rid, access=access)
        started = time.perf_counter()
        status = 0
        complete = False  # the response's last body message has been handed on
        disconnected = False  # the client left before that
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        tracked = _Response(task)
        self.slow_readers.responses.add(tracked)

        async def receive_noting() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                disconnected = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                # A response rendered after the client left (the 400 no one reads) never
                # reached it: the log says the client disconnected, not its status.
                status = 0 if disconnected else message["status"]
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
            if message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            tracked.since = loop.time()
            try:
                await send(message)
            finally:
                tracked.since = None

        try:
            await self.app(scope, receive_noting, send_with_id)
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
            ended = time.perf_counter()
            if disconnected or tracked.overdue:
                # What the app answered then (a 400 saying the client left) no one read.
                access.error_type = access.error = access.hint = None
            event = "client disconnected" if disconnected else "request"
            log.info(
                "client stopped reading" if tracked.overdue else event,
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status or "-",
                    "ms": round((ended - started) * 1000, 1),
                    **access.fields(started, ended),
                },
            )

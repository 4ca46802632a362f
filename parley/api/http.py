"""HTTP helpers shared by the resource modules: bodies, disconnects, JSON responses.

Parsing a body into wire models is ``parley.wire.parse`` (the batch worker uses it too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from parley.errors import InvalidRequestError, RequestTimeoutError, RequestTooLargeError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# A body must also arrive at this rate on average (after its first
# ``idle`` seconds): a client sending a byte every few seconds would
# otherwise hold its connection for days within the per-gap timeout.
MIN_BODY_RATE = 64 * 1024  # bytes a second


async def read_body(request: Request, limit: int, idle: float = 30.0) -> bytes:
    """The request body, refusing with 413 as soon as it exceeds ``limit`` bytes,
    and with 408 (closing the connection) when it stops arriving.

    A declared ``Content-Length`` over the limit is refused before reading; a
    chunked body is counted while it streams, never buffered past the limit.
    The body may go at most ``idle`` seconds without data, and must be
    complete within ``idle`` seconds plus one for every ``MIN_BODY_RATE``
    bytes received.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"Request exceeds the maximum allowed number of bytes ({limit})")
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise InvalidRequestError(f"Content-Type must be application/json, not '{ctype}'")
    chunks: list[bytes] = []
    size = 0
    started = anyio.current_time()
    try:
        with anyio.CancelScope(deadline=started + idle) as waiting:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(
                        f"Request exceeds the maximum allowed number of bytes ({limit})"
                    )
                chunks.append(chunk)
                waiting.deadline = min(
                    anyio.current_time() + idle, started + idle + size / MIN_BODY_RATE
                )
    except ClientDisconnect:
        raise InvalidRequestError(
            "the client closed the connection before the body arrived"
        ) from None
    if waiting.cancelled_caught:
        of = f" of {declared}" if declared is not None else ""
        raise RequestTimeoutError(
            f"the request body did not arrive in time: {size}{of} bytes in "
            f"{anyio.current_time() - started:.0f} s (at most {idle:g} s without data, "
            f"and {MIN_BODY_RATE // 1024} KB/s on average); nothing was done",
            headers={"connection": "close"},  # the rest of the body is not read
        )
    return b"".join(chunks)


async def unless_client_leaves(
    request: Request,
    work: Awaitable[T],
    *,
    on_leave: Callable[[], None] | None = None,
    left: str = "the client disconnected before the request was prepared",
) -> T:
    """``work``'s result, unless the client disconnects first: then ``on_leave``
    runs, ``work`` is cancelled (a URL fetch under way closes its connection) and
    a 400 saying ``left`` is raised, which no one reads. uvicorn does not cancel
    a handler when its client leaves, it only reports ``http.disconnect`` to the
    next ``receive``. Call it once the body has been read."""
    result: list[T] = []
    failed: list[Exception] = []

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if on_leave is not None:
            on_leave()
        tg.cancel_scope.cancel()

    async def run() -> None:
        try:
            result.append(await work)
        except Exception as exc:  # raised below, outside the task group's exception group
            failed.append(exc)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(run)
    if failed:
        raise failed[0]
    if not result:
        raise InvalidRequestError(left)
    return result[0]


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")

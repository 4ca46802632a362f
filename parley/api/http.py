"""HTTP helpers shared by the resource modules: bodies, parsing, JSON responses."""

from __future__ import annotations

import contextlib
import json
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from parley.errors import InvalidRequestError, RequestTimeoutError, RequestTooLargeError
from parley.offload import Offload
from parley.wire.common import error_path

M = TypeVar("M", bound=BaseModel)


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


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; the first problem becomes a 400 naming its path."""
    if not body.strip():
        raise InvalidRequestError("the request body is empty; expected a JSON object")
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            detail = str(first["msg"]).removeprefix("Invalid JSON: ")
            raise InvalidRequestError(f"the request body is not valid JSON: {detail}") from None
        path = error_path(tuple(first["loc"]))
        if first["type"] == "model_type" and not path:
            raise InvalidRequestError("the request body must be a JSON object") from None
        message = f"{path}: {first['msg']}" if path else str(first["msg"])
        raise InvalidRequestError(message) from None
    _refuse_duplicate_keys(body)
    return parsed


async def parse_body(model: type[M], body: bytes, offload: Offload) -> M:
    """``parse``, in a worker thread when the body is big (see ``parley.offload``)."""
    return await offload.run(len(body), lambda: parse(model, body))


def _refuse_duplicate_keys(body: bytes) -> None:
    """JSON parsers keep the last of two equal keys; a request that has them is
    ambiguous, so it is refused rather than guessed at."""

    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise InvalidRequestError(
                    f"the request body has the key '{key}' twice in one object; "
                    "each key may appear once"
                )
            seen.add(key)
        # Only the keys matter: keeping no objects keeps a big body's check from
        # building (and the garbage collector from walking) a second copy of it.
        return None

    with contextlib.suppress(ValueError, RecursionError):  # already validated by pydantic
        json.loads(body, object_pairs_hook=pairs)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")

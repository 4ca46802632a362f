"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from parley.api import openapi
from parley.api.deps import AppState, authenticated, key_owner
from parley.api.errors import request_id_of
from parley.api.http import json_response, read_body, unless_client_leaves
from parley.api.middleware import access_of
from parley.ratelimit import Meter
from parley.streaming.sse import encode
from parley.wire import requests as wr
from parley.wire import responses as wresp
from parley.wire.events import StreamEvent
from parley.wire.parse import parse_body

T = TypeVar("T")

router = APIRouter(responses=openapi.error_responses())

_CREATE_BODY = openapi.body(wr.CreateMessageRequest)
_COUNT_BODY = openapi.body(wr.CountTokensRequest)


@router.post("/v1/messages", openapi_extra=_CREATE_BODY, response_model=wresp.Message)
async def create_message(
    request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    settings, service = state.settings, state.messages
    meter = Meter(state.limiter, key_owner(request))

    def until_client_leaves(work: Awaitable[T]) -> Awaitable[T]:
        # preparing may fetch URL documents; an upstream may take its time to accept
        return unless_client_leaves(request, work)

    run = await service.open(
        await read_body(request, settings.max_body_bytes, settings.body_timeout),
        meter,
        guard=until_client_leaves,
    )
    access = access_of(request)
    access.model, access.stream, access.state = run.state.model, run.stream, run.state
    if run.stream:
        return StreamingResponse(
            _sse(run.events(request_id_of(request)), run.settle),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        message = await unless_client_leaves(
            request,
            run.message(),
            on_leave=run.cancel,
            left="the client disconnected; generation cancelled",
        )
    finally:
        run.settle()  # (done already, unless the client left before it started)
    return json_response(message)


@router.post(
    "/v1/messages/count_tokens", openapi_extra=_COUNT_BODY, response_model=wresp.TokenCount
)
async def count_tokens(
    request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    # Token counting is metered apart from Messages, by its own request limit (as
    # the API does): it spends none of the key's Messages requests or tokens, and
    # its responses carry the headers of its own bucket.
    settings, service = state.settings, state.messages
    limiter, owner = state.count_limiter, key_owner(request)
    request.state.rate_limited = limiter.headers_for(owner) if limiter.enabled else None
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
    size = len(body)
    async with service.offload.slot(size):
        req = await parse_body(wr.CountTokensRequest, body, service.offload)
        del body
        access = access_of(request)
        access.model = req.model
        limiter.admit_request(owner)  # before rendering, as for Messages
        count = await unless_client_leaves(request, service.count_tokens(req, size=size))
    access.input_tokens = count.input_tokens
    return json_response(count)


async def _sse(
    events: AsyncGenerator[StreamEvent, None], done: Callable[[], None]
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(events):  # its generation is cancelled now, not when collected
            async for event in events:
                yield encode(event)
    finally:
        done()

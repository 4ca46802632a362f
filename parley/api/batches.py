"""``/v1/messages/batches``: create, retrieve, list, cancel, delete, results.

Create checks the envelope at once (custom ids, count, no streaming) and
stores each request's params as given; params are validated when the
request is processed, and an invalid one ends as an ``errored`` result.
Batches belong to the API key that created them; other keys get 404.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from parley.api import openapi
from parley.api.deps import AppState, authenticated, key_owner
from parley.api.http import json_response, read_body
from parley.batches.store import BatchRow
from parley.errors import InvalidRequestError
from parley.ids import batch_id
from parley.wire import json_body
from parley.wire.batches import DeletedMessageBatch, MessageBatch, MessageBatchPage, RequestCounts

router = APIRouter(responses=openapi.error_responses())

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # used with fullmatch: "$" would allow "a\n"
BASE = "/v1/messages/batches"

_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {
                        "requests": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["custom_id", "params"],
                                "properties": {
                                    "custom_id": {"type": "string"},
                                    "params": {"type": "object"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}


def _stamp(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wire(row: BatchRow, request: Request) -> MessageBatch:
    ended = row.ended_at is not None
    base = str(request.base_url).rstrip("/")
    return MessageBatch(
        id=row.id,
        processing_status=row.status,
        request_counts=RequestCounts(**row.counts),
        created_at=_stamp(row.created_at) or "",
        expires_at=_stamp(row.expires_at) or "",
        ended_at=_stamp(row.ended_at),
        cancel_initiated_at=_stamp(row.cancel_initiated_at),
        results_url=f"{base}{BASE}/{row.id}/results" if ended else None,
    )


def envelope(body: bytes) -> list[tuple[str, str]]:
    """``(custom_id, params JSON)`` of each request, or a 400 naming the first problem.

    The body is held to the rules ``/v1/messages`` applies (no key twice in one
    object, no lone surrogates in strings), so what is stored means one thing
    and can be written as UTF-8.
    """
    data = json_body.loads(body)
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    extra = set(data) - {"requests"}
    if extra:
        raise InvalidRequestError(
            f"{json_body.shown(sorted(extra)[0])}: Extra inputs are not permitted"
        )
    requests = data.get("requests")
    if not isinstance(requests, list):
        raise InvalidRequestError("requests: Field required (a list of requests)")
    if not requests:
        raise InvalidRequestError("requests: List should have at least 1 item")
    if len(requests) > MAX_REQUESTS:
        raise InvalidRequestError(
            f"requests: a batch may contain at most {MAX_REQUESTS} requests, got {len(requests)}"
        )
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for i, item in enumerate(requests):
        path = f"requests.{i}"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{path}: Input should be an object")
        extra = set(item) - {"custom_id", "params"}
        if extra:
            raise InvalidRequestError(
                f"{path}.{json_body.shown(sorted(extra)[0])}: Extra inputs are not permitted"
            )
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise InvalidRequestError(
                f"{path}.custom_id: must be 1 to 64 characters of letters, digits, '_' and '-'"
            )
        if custom_id in seen:
            raise InvalidRequestError(
                f"{path}.custom_id: duplicate custom_id '{custom_id}'; custom_id values must be "
                "unique within a batch"
            )
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, dict):
            raise InvalidRequestError(f"{path}.params: Field required (an object)")
        if params.get("stream"):
            raise InvalidRequestError(
                f"{path}.params.stream: streaming is not supported in message batches"
            )
        out.append((custom_id, json_body.dumps(params, f"{path}.params")))
    return out


@router.post(BASE, openapi_extra=_CREATE_BODY, response_model=MessageBatch)
async def create_batch(
    request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    body = await read_body(request, state.settings.max_batch_bytes, state.settings.body_timeout)
    items = await anyio.to_thread.run_sync(envelope, body)
    del body
    store = state.batch_store()
    row = await anyio.to_thread.run_sync(
        lambda: store.create(
            batch_id(), key_owner(request), items, expires_in=state.settings.batch_expiry
        )
    )
    state.batch_worker().wake()
    return json_response(_wire(row, request))


@router.get(BASE, response_model=MessageBatchPage)
async def list_batches(
    request: Request,
    state: Annotated[AppState, Depends(authenticated)],
    limit: Annotated[int, Query()] = 20,
    before_id: Annotated[str | None, Query()] = None,
    after_id: Annotated[str | None, Query()] = None,
) -> Response:
    store, owner = state.batch_store(), key_owner(request)
    rows, has_more = await anyio.to_thread.run_sync(
        lambda: store.page(owner, limit=limit, before_id=before_id, after_id=after_id)
    )
    data = [_wire(r, request) for r in rows]
    page = MessageBatchPage(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
    return json_response(page)


@router.get(BASE + "/{message_batch_id}", response_model=MessageBatch)
async def get_batch(
    message_batch_id: str, request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    store, owner = state.batch_store(), key_owner(request)
    row = await anyio.to_thread.run_sync(store.get, message_batch_id, owner)
    return json_response(_wire(row, request))


@router.post(BASE + "/{message_batch_id}/cancel", response_model=MessageBatch)
async def cancel_batch(
    message_batch_id: str, request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    store, owner = state.batch_store(), key_owner(request)
    row = await anyio.to_thread.run_sync(store.cancel, message_batch_id, owner)
    if row.ended_at is None:
        state.batch_worker().stop_batch(row.seq, "canceled")
    return json_response(_wire(row, request))


@router.delete(BASE + "/{message_batch_id}", response_model=DeletedMessageBatch)
async def delete_batch(
    message_batch_id: str, request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    store, owner = state.batch_store(), key_owner(request)
    await anyio.to_thread.run_sync(store.delete, message_batch_id, owner)
    return json_response(DeletedMessageBatch(id=message_batch_id))


@router.get(BASE + "/{message_batch_id}/results")
async def batch_results(
    message_batch_id: str, request: Request, state: Annotated[AppState, Depends(authenticated)]
) -> Response:
    store, owner = state.batch_store(), key_owner(request)
    pages = await anyio.to_thread.run_sync(store.results, message_batch_id, owner)

    async def lines() -> AsyncIterator[bytes]:
        while True:
            page: Any = await anyio.to_thread.run_sync(next, pages, None)
            if page is None:
                return
            yield b"".join(page)

    return StreamingResponse(lines(), media_type="application/x-jsonl")

"""``engines.llamaserver.client``: retries before the first byte only, the start-up wait.

The upstream is an ``httpx.MockTransport`` (no socket): these are the paths
the fake llama-server cannot reach over ASGI (a connection refused and then
accepted, one closed before any response) and the retry rules in isolation.
The end-to-end fault mappings are in ``test_upstream_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from parley.engines.llamaserver.client import LlamaServerClient
from parley.errors import EngineError, ModelLoadError, OverloadedError

URL = "http://upstream.test"
LAST = {"content": "", "tokens": [], "stop": True, "stop_type": "eos"}
CHUNKS = [{"content": "Hi", "tokens": [17830], "stop": False}, LAST]


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def _client(
    handler: Callable[[httpx.Request], httpx.Response], retries: int = 2
) -> LlamaServerClient:
    return LlamaServerClient(
        URL,
        api_key=None,
        timeout=5,
        connect_timeout=1,
        retries=retries,
        transport=httpx.MockTransport(handler),
    )


def _answers(
    *replies: httpx.Response | Exception,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[int]]:
    """A handler giving ``replies`` in turn (an exception is raised), and its call count."""
    calls = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        reply = replies[min(calls[0], len(replies) - 1)]
        calls[0] += 1
        if isinstance(reply, Exception):
            raise reply
        return reply

    return handle, calls


def _complete(client: LlamaServerClient) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        try:
            return [chunk async for chunk in client.completion({"prompt": [1]})]
        finally:
            await client.close()

    return asyncio.run(run())


def _ok() -> httpx.Response:
    return httpx.Response(200, content=_sse(CHUNKS), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("reset"),
    ],
    ids=["refused", "closed before answering", "reset before answering"],
)
def test_a_request_the_upstream_did_not_answer_is_sent_again(failure: Exception) -> None:
    handler, calls = _answers(failure, failure, _ok())
    assert _complete(_client(handler)) == CHUNKS
    assert calls[0] == 3


def test_an_upstream_still_unreachable_after_the_retries_is_a_529() -> None:
    handler, calls = _answers(httpx.ConnectError("refused"))
    with pytest.raises(OverloadedError, match="cannot be reached") as caught:
        _complete(_client(handler, retries=1))
    assert calls[0] == 2 and caught.value.headers["retry-after"]


def test_a_short_retry_after_is_waited_out_a_long_one_is_the_clients() -> None:
    busy_briefly = httpx.Response(
        503, json={"error": {"message": "busy"}}, headers={"retry-after": "0"}
    )
    handler, calls = _answers(busy_briefly, _ok())
    assert _complete(_client(handler)) == CHUNKS
    assert calls[0] == 2
    busy_long = httpx.Response(
        429, json={"error": {"message": "busy"}}, headers={"retry-after": "30"}
    )
    handler, calls = _answers(busy_long, _ok())
    with pytest.raises(OverloadedError) as caught:
        _complete(_client(handler))
    assert calls[0] == 1 and caught.value.headers["retry-after"] == "30"


def test_other_statuses_are_not_retried() -> None:
    handler, calls = _answers(httpx.Response(500, json={"error": {"message": "boom"}}), _ok())
    with pytest.raises(EngineError, match="HTTP 500: boom"):
        _complete(_client(handler))
    assert calls[0] == 1


class _BreaksAfterOneChunk(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield _sse(CHUNKS[:1])
        raise httpx.ReadError("connection reset")


def test_a_failure_once_the_answer_began_is_final() -> None:
    breaking = httpx.Response(200, stream=_BreaksAfterOneChunk())
    handler, calls = _answers(breaking, _ok())
    client = _client(handler)
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        try:
            async for chunk in client.completion({"prompt": [1]}):
                seen.append(chunk)
        finally:
            await client.close()

    with pytest.raises(EngineError, match="closed the connection before its answer ended"):
        asyncio.run(run())
    assert seen == CHUNKS[:1] and calls[0] == 1


def _wait_ready(client: LlamaServerClient, seconds: float) -> None:
    async def run() -> None:
        try:
            await client.wait_ready(seconds)
        finally:
            await client.close()

    asyncio.run(run())


def test_start_up_waits_through_refusals_and_loading() -> None:
    loading = httpx.Response(
        503, json={"error": {"message": "Loading model", "type": "unavailable_error"}}
    )
    handler, calls = _answers(
        httpx.ConnectError("refused"), loading, httpx.Response(200, json={"status": "ok"})
    )
    _wait_ready(_client(handler), 60)
    assert calls[0] == 3


def test_start_up_gives_up_after_its_limit_naming_what_it_saw() -> None:
    loading = httpx.Response(503, json={"error": {"message": "Loading model"}})
    handler, _ = _answers(loading)
    with pytest.raises(
        ModelLoadError, match=r"not ready after 0.3 s \(it answers HTTP 503 Loading model\)"
    ):
        _wait_ready(_client(handler), 0.3)


def test_start_up_fails_at_once_for_what_is_not_llama_server() -> None:
    handler, calls = _answers(httpx.Response(404, text="no such route"))
    with pytest.raises(ModelLoadError, match="is it llama-server"):
        _wait_ready(_client(handler), 60)
    assert calls[0] == 1

"""httpcore's network layer on asyncio (``upstream.netio``), against real sockets.

Each test starts a small asyncio server on a free loopback port and drives
httpx through ``netio.Transport``: the failures an upstream can cause come out
as the httpx exceptions ``upstream.http`` translates, and pooling still works.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest

from parley.engines.upstream import netio

LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=8)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _request_head(reader: asyncio.StreamReader) -> int:
    """Read one request's head and body; its body length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return length


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test written as a coroutine, run on a loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def _client(url: str, **kwargs: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        transport=netio.transport(url, LIMITS),
        timeout=httpx.Timeout(kwargs.get("timeout", 10.0)),
    )


def test_only_plain_http_gets_it() -> None:
    assert isinstance(netio.transport("http://127.0.0.1:1", LIMITS), netio.Transport)
    assert netio.transport("https://example.invalid", LIMITS) is None


@_run
async def test_requests_share_one_kept_alive_connection() -> None:
    connections = 0
    ended = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await _request_head(reader)
            except asyncio.IncompleteReadError:  # the client closed its connection
                break
            writer.write(RESPONSE)
            await writer.drain()
        writer.close()
        ended.set()

    server, url = await _serve(handler)
    async with server:
        async with _client(url) as client:
            for _ in range(3):
                response = await client.post("/x", json={"a": 1})
                assert response.text == "ok"
        await ended.wait()
    assert connections == 1


@_run
async def test_a_big_body_is_written_whole() -> None:
    """Bigger than the socket's buffers: the writer waits for room (flow control)."""
    got: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0)  # let the client fill its buffers first
        got.append(await _request_head(reader))
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    body = b"x" * (16 * 1024 * 1024)
    async with server, _client(url) as client:
        response = await client.post("/x", content=body)
    assert response.text == "ok" and got == [len(body)]


@_run
async def test_a_streamed_body_arrives_in_order() -> None:
    lines = [f"data: {i}".encode() for i in range(500)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for line in lines:
            chunk = line + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server, _client(url) as client, client.stream("POST", "/x", json={}) as response:
        seen = [line async for line in response.aiter_lines() if line]
    assert seen == [line.decode() for line in lines]


@_run
async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        async with _client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/health")


@_run
async def test_a_silent_server_is_a_read_timeout() -> None:
    released = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await released.wait()  # then says nothing more
        writer.close()

    server, url = await _serve(handler)
    async with server, _client(url, timeout=0.2) as client:
        async with client.stream("POST", "/x", json={}) as response:
            with pytest.raises(httpx.ReadTimeout):
                async for _ in response.aiter_bytes():
                    pass
        released.set()


@_run
async def test_a_server_closing_mid_body_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server, _client(url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/x", json={})


@_run
async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """llama-server closes a stream's connection after it: the next request
    opens a new one instead of failing on the dead one."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _request_head(reader)
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()  # keep-alive in HTTP/1.1 terms, closed all the same
        await writer.wait_closed()

    server, url = await _serve(handler)
    async with server, _client(url) as client:
        for _ in range(3):
            assert (await client.post("/x", json={})).text == "ok"
            for _ in range(10_000):  # loop turns until the close reaches the client
                if _idle_closed(client):
                    break
                await asyncio.sleep(0)
            assert _idle_closed(client)
    assert connections == 3


def _idle_closed(client: httpx.AsyncClient) -> bool:
    transport = client._transport
    assert isinstance(transport, netio.Transport)
    return all(c.is_idle() and c.has_expired() for c in transport._pool.connections)

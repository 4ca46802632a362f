"""httpcore's network layer on asyncio itself, for plain-HTTP upstreams.

An upstream streams one chunk per token, and parley's CPU is taken from the
upstream's own threads on a machine they share (bench/RESULTS.md, "Gateway").
httpx's default network backend (anyio) opens a cancel scope and a task
check for every read, and connects through happy-eyeballs task groups; on
this 2-core machine that is about 70 µs of each token's ~220 µs of receiving
and a new connection per request (llama-server closes its streams' connections).
``Backend`` is the same contract (``httpcore.AsyncNetworkBackend``) over an
``asyncio.Protocol``: a read awaits one future, its timeout one timer
handle. httpx above it is unchanged: pooling, h11, redirects, the exception
mapping (``ReadTimeout``, ``ConnectError``... raised here as httpcore's own,
so httpx maps them as before and ``upstream.http.UPSTREAM`` translates them).

Plain ``http://`` only: ``transport`` returns None for other schemes, and
those keep httpx's default transport (TLS through anyio).
"""

# httpcore's network interface takes its timeouts as arguments (ASYNC109).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

HIGH_WATER = 256 * 1024  # bytes buffered before the socket stops being read
LOW_WATER = 64 * 1024


class _Protocol(asyncio.Protocol):
    """The bytes received and whether the peer has closed; wakes one reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buffer = bytearray()
        self.closed = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.writable = True  # False while the transport asks writers to wait
        self.drain_waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()
        if len(self.buffer) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        for waiter in self.drain_waiters:
            _resolve(waiter)
        self.drain_waiters.clear()

    def _wake(self) -> None:
        if self.waiter is not None:
            _resolve(self.waiter)


class Stream(httpcore.AsyncNetworkStream):
    """One TCP connection, read and written as httpcore expects."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.buffer and not p.closed:
            p.waiter = p.loop.create_future()
            try:
                await _wait(p.waiter, timeout)
            finally:
                p.waiter = None
            if not p.buffer and not p.closed:
                raise httpcore.ReadTimeout(f"nothing received for {timeout} s")
        if not p.buffer:
            if p.error is not None:
                raise httpcore.ReadError(f"connection lost: {p.error!r}")
            return b""  # the peer closed: httpcore reads that as the end
        if len(p.buffer) <= max_bytes:
            data = bytes(p.buffer)
            p.buffer.clear()
        else:
            data = bytes(p.buffer[:max_bytes])
            del p.buffer[:max_bytes]
        if p.paused and len(p.buffer) < LOW_WATER:
            p.paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        p = self._protocol
        if not p.writable:  # the kernel's buffer is full: wait for room
            waiter = p.loop.create_future()
            p.drain_waiters.append(waiter)
            await _wait(waiter, timeout)
            if not p.writable:
                raise httpcore.WriteTimeout(f"no room to write for {timeout} s")

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("netio serves plain HTTP only (module doc)")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle and readable: the peer closed (or broke HTTP)
            return bool(self._protocol.buffer) or self._protocol.closed
        names = {"socket": "socket", "server_addr": "peername", "client_addr": "sockname"}
        return self._transport.get_extra_info(names[info]) if info in names else None


async def _wait(future: asyncio.Future[None], timeout: float | None) -> None:
    """Await ``future``, for at most ``timeout`` s: then it is resolved by a timer
    (one handle, where ``asyncio.wait_for`` would add a task); the caller tells
    the two apart by what it waited for."""
    if timeout is None:
        await future
        return
    handle = asyncio.get_running_loop().call_later(timeout, _resolve, future)
    try:
        await future
    finally:
        handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Backend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(loop), host, port, local_addr=local),
                timeout,
            )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no connection within {timeout:g} s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return Stream(transport, protocol)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("netio connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Transport(httpx.AsyncHTTPTransport):
    """httpx's own transport with its connection pool on ``Backend``."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )


def transport(url: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """``Transport`` for a plain-HTTP ``url``; None (httpx's default) for others."""
    return Transport(limits) if httpx.URL(url).scheme == "http" else None

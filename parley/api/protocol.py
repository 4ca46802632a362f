"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with two guards.

uvicorn closes idle keep-alive connections but puts no bound on how long a
client may take to send a request's headers, nor on how many connections
are open. A client that opens sockets and sends nothing (or half a request
line) then holds a file descriptor for ever, and past the process's
descriptor limit every new client is reset. So:

* **Header timeout.** From the moment a connection opens, and from the first
  byte of each further request on a kept-alive connection, the request's
  headers must be complete within ``header_timeout`` seconds; otherwise the
  connection is closed. (Bodies have their own bound, in ``api/http.py``,
  where a 408 can still be answered in the Anthropic envelope.)
* **Connection cap.** At ``max_connections`` open connections a new one is
  answered at once with ``529 overloaded_error`` (``retry-after: 1``) and
  closed; the connections already open are not touched. The cap is kept
  below the descriptor limit (``connection_cap``), so accepting never fails.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from parley.ids import request_id
from parley.wire.responses import ErrorDetail, ErrorEnvelope

log = logging.getLogger("parley.connections")

# Descriptors kept free for everything that is not a client connection: the
# listening socket, the database and its WAL, log files, the event loop's own,
# URL fetches, threads' pipes.
FD_RESERVE = 64


@dataclass
class ConnectionLimits:
    header_timeout: float  # seconds to complete a request's headers
    max_connections: int
    refusing: bool = False  # at the cap (logged once per episode, not per connection)


def connection_cap(wanted: int, reserve: int = FD_RESERVE) -> int:
    """The connection cap to use: ``wanted``, raising the soft descriptor limit
    towards the hard one if it is too low for it, else lowered to fit."""
    if sys.platform == "win32":  # no RLIMIT_NOFILE to fit
        return wanted
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    return fit_cap(wanted, soft, reserve)


def fit_cap(wanted: int, soft_limit: int, reserve: int = FD_RESERVE) -> int:
    """``wanted``, or fewer when the descriptor limit leaves no room for it."""
    import resource

    if soft_limit == resource.RLIM_INFINITY:
        return wanted
    room = max(1, soft_limit - reserve)
    if room < wanted:
        log.warning(
            "connection cap lowered to fit the open-files limit",
            extra={"wanted": wanted, "cap": room, "nofile": soft_limit},
        )
    return min(wanted, room)


def _overloaded() -> bytes:
    body = ErrorEnvelope(
        error=ErrorDetail(
            type="overloaded_error",
            message="Overloaded: the server has too many open connections; retry shortly",
        ),
        request_id=request_id(),
    ).model_dump_json()
    return (
        "HTTP/1.1 529 \r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the header timeout and the connection cap of
    ``limits`` (a class attribute: uvicorn builds protocols from a class)."""

    limits: ConnectionLimits

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            if not limits.refusing:
                limits.refusing = True
                log.warning(
                    "connection cap reached: refusing new connections",
                    extra={"max_connections": limits.max_connections},
                )
            self.transport = transport  # connection_lost closes it again, harmlessly
            transport.write(_overloaded())
            transport.close()
            return
        if limits.refusing:
            limits.refusing = False
            log.info("accepting connections again", extra={"open": len(self.connections)})
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        # Between requests, the first byte of the next one starts its header clock
        # (uvicorn's keep-alive timer stops at any byte).
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout, self._headers_too_slow
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.info(
            "connection closed: request headers incomplete",
            extra={"client": _peer(self.client), "seconds": self.limits.header_timeout},
        )
        # Leave the count now, not when uvicorn hears the close: a client that sees
        # the connection end may connect again at once, and must find the room free.
        self.connections.discard(self)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to ``limits``."""

    class ParleyHttpProtocol(GuardedHttpToolsProtocol):
        pass

    ParleyHttpProtocol.limits = limits
    return ParleyHttpProtocol

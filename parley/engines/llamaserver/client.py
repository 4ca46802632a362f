"""The HTTP side of an upstream llama-server: ``/health``, ``/props`` and streamed ``/completion``.

Upstream failures cross into parley at the shared boundary
(``upstream_http``: its table says what each becomes); here, besides, a
stream that ends before its last chunk is an ``api_error``.

A failure before the upstream answered 200 is the request's HTTP status
(nothing reached the client yet: ``completion``'s ``on_answer``); one after
that reaches a streamed client as ``event: error``.

Retries: a ``/completion`` is sent again, at most ``retries`` times, while the
upstream could not be reached, dropped the connection before answering, or
answered 429/503 with a ``retry-after`` of at most ``RETRY_WAIT_MAX`` s;
only before the response's headers, so nothing the upstream wrote has been
relayed and no token reaches a client twice. Once a 200 began, a failure is
final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx

from parley.engines.llamacpp.vocab import ModelLoadError
from parley.engines.upstream_http import (
    NOT_ANSWERED,
    UPSTREAM,
    error_detail,
    error_message,
    loads,
    malformed,
    status_error,
    upstream_error,
)
from parley.errors import EngineError

log = logging.getLogger("parley.engine.llamaserver")

RETRY_WAIT_MAX = 2.0  # s: a busy upstream asking for longer is the client's to wait out
HEALTH_POLL = 0.25  # s between start-up checks of /health
PROGRESS_EVERY = 10.0  # s between "still waiting" log lines at start-up


class LlamaServerClient:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._retries = retries
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def wait_ready(self, seconds: float) -> None:
        """Return once ``GET /health`` answers 200. llama-server answers 503 while
        it loads its model, and may not listen yet when started beside parley:
        both are waited for (logged every ``PROGRESS_EVERY`` s), at most
        ``seconds``; then, or at once for an answer that is not llama-server's,
        ``ModelLoadError`` says what was last seen."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + seconds
        next_log = started
        while True:
            left = deadline - loop.time()
            reason, hopeless = await self._health(max(left, 0.1))
            if reason is None:
                if loop.time() - started >= HEALTH_POLL:
                    waited = _secs(loop.time() - started)
                    log.info("upstream up", extra={"upstream": self.url, "waited_s": waited})
                return
            if hopeless:
                raise ModelLoadError(f"{self.url}/health: it {reason}; is it llama-server?")
            now = loop.time()
            if now >= deadline:
                raise ModelLoadError(
                    f"llama-server at {self.url} was not ready after {seconds:g} s (it {reason}); "
                    "start it first, or allow it longer with --engine-opt startup_timeout=SECONDS"
                )
            if now >= next_log:
                log.info(
                    "waiting for the upstream",
                    extra={"upstream": self.url, "state": reason, "waited_s": _secs(now - started)},
                )
                next_log = now + PROGRESS_EVERY
            await asyncio.sleep(min(HEALTH_POLL, max(deadline - now, 0)))

    async def _health(self, within: float) -> tuple[str | None, bool]:
        """(None, _) when healthy, else (what was seen, whether waiting cannot help)."""
        limit = httpx.Timeout(within, connect=min(within, self._connect_timeout))
        try:
            response = await self._http.get("/health", timeout=limit)
        except httpx.HTTPError as exc:  # not listening yet, restarting, or hung
            return f"cannot be reached ({type(exc).__name__})", False
        if response.status_code == 200:
            return None, False
        message = error_message(error_detail(response.text))
        said = f"answers HTTP {response.status_code} {message[:200]}"
        # 503 is llama-server loading; other 5xx may be a proxy in front of it, starting.
        return said, response.status_code < 500

    async def props(self) -> dict[str, Any]:
        with UPSTREAM.crossing("GET /props", url=self.url, timeout=self._timeout):
            response = await self._http.get("/props")
            if response.status_code != 200:
                raise status_error(response, response.text, "GET /props", self.url)
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise EngineError(f"GET /props: the upstream {self.url} answered no JSON object")
            return data

    async def completion(
        self, body: dict[str, Any], *, on_answer: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed ``/completion``, the last one with ``stop``
        true; ``on_answer`` runs once the upstream answered 200 (before its
        prefill: llama-server sends its headers at once). Leaving the iteration
        closes the request (llama-server then stops decoding it)."""
        what = "POST /completion"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            async with self._answer(body) as response:
                if on_answer is not None:
                    on_answer()
                stopped = False
                async for line in response.aiter_lines():
                    chunk = _chunk(line, what, self.url)
                    if chunk is not None:
                        stopped = bool(chunk.get("stop"))
                        yield chunk
                if not stopped:
                    raise EngineError(
                        f"{what}: the upstream {self.url} ended its stream before the last chunk"
                    )

    @contextlib.asynccontextmanager
    async def _answer(self, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """The upstream's 200 to ``POST /completion``, its headers read (sent
        again while it could not be reached or was briefly busy: module doc)."""
        for attempt in range(self._retries + 1):
            final = attempt == self._retries
            request = self._http.build_request("POST", "/completion", json=body)
            try:
                response = await self._http.send(request, stream=True)
            except NOT_ANSWERED as exc:
                if final:
                    raise
                wait, reason = 0.1 * 2**attempt, type(exc).__name__
            else:
                try:
                    if response.status_code == 200:
                        yield response
                        return
                    text = (await response.aread()).decode(errors="replace")
                finally:
                    await response.aclose()
                error = status_error(response, text, "POST /completion", self.url)
                busy = _busy_wait(response)
                if final or busy is None:
                    raise error
                wait, reason = busy, f"HTTP {response.status_code}"
            log.info(
                "upstream request sent again",
                extra={"upstream": self.url, "reason": reason, "attempt": attempt + 2},
            )
            await asyncio.sleep(wait)


def _chunk(line: str, what: str, url: str) -> dict[str, Any] | None:
    """One SSE line's chunk (None for what carries none), or the upstream's error."""
    if line.startswith("error: "):  # older llama-server builds
        raise upstream_error(loads(line, 7, what, url), what, url)
    if not line.startswith("data: "):
        return None
    chunk = loads(line, 6, what, url)
    if not isinstance(chunk, dict):
        raise malformed(line, what, url)
    if "error" in chunk:  # llama-server ends the stream with it
        raise upstream_error(chunk["error"], what, url)
    tokens = chunk.get("tokens", [])
    if (
        not isinstance(chunk.get("content", ""), str)
        or not isinstance(tokens, list)
        or not all(isinstance(t, int) for t in tokens)
    ):
        raise malformed(line, what, url)
    return chunk


def _busy_wait(response: httpx.Response) -> float | None:
    """Seconds to wait before sending again, for a 429/503 asking for at most
    ``RETRY_WAIT_MAX``; None when it is not worth a retry here."""
    if response.status_code not in (429, 503):
        return None
    retry = response.headers.get("retry-after", "")
    wait = int(retry) if retry.isdigit() else 1
    return float(wait) if wait <= RETRY_WAIT_MAX else None


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"

"""The HTTP side every upstream shares: the client, its retries, start-up wait and errors.

httpx's exceptions and the upstream's error statuses cross into parley here
(``UPSTREAM`` and ``UpstreamClient.status_error``)::

    the upstream ...                                  parley answers
    cannot be reached (nothing listening, connect     529 overloaded_error + retry-after
      timeout)
    answers 429 or 503 (busy; 503 also while it       529 overloaded_error + its retry-after
      loads its model)
    sends nothing for ``timeout`` s                   504 timeout_error
    answers another status (its 500, a 4xx for what   500 api_error naming the upstream
      parley sent), drops the connection, sends
      malformed SSE or an error chunk, or ends the
      stream before its last chunk

An engine's client may name more (llama-server: its context-size refusal is
a 400 ``prompt is too long``). A non-streamed request gets these as its
status. A streamed one already has its ``message_start`` (sent at
admission), so it gets them as ``event: error``. 504 rather than
``api_error`` for a silent upstream: the API's own ``timeout_error`` says
"took too long" (the SDK raises ``GatewayTimeoutError``, and retries it like
any 5xx).

Retries: a POST is sent again, at most ``retries`` times, while the upstream
could not be reached, dropped the connection before answering, or answered
429/503 with a ``retry-after`` of at most ``RETRY_WAIT_MAX`` s; only before
the response's headers, so nothing the upstream wrote has been relayed and no
token reaches a client twice. Once a 200 began, a failure is final. With
several backends (``backends.Pool``) a client does not retry by itself: the
pool sends the request to another backend instead, reading how it went from
the ``Attempt`` that ``answer`` fills in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from parley.boundary import Boundary
from parley.engines.upstream import netio
from parley.engines.upstream.backends import Attempt
from parley.errors import EngineError, ModelLoadError, OverloadedError, ParleyError, TimeoutError_

log = logging.getLogger("parley.engine.upstream")

RETRY_WAIT_MAX = 2.0  # s: a busy upstream asking for longer is the client's to wait out
HEALTH_POLL = 0.25  # s between start-up checks of /health
PROGRESS_EVERY = 10.0  # s between "still waiting" log lines at start-up


def _unreachable(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return OverloadedError(
        f"{what}: the upstream {ctx['url']} cannot be reached ({exc!r}); retry shortly",
        headers={"retry-after": "5"},
    )


def _slow(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return TimeoutError_(
        f"{what}: the upstream {ctx['url']} sent nothing for {ctx['timeout']:g} s "
        f"({type(exc).__name__})"
    )


def _dropped(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return EngineError(
        f"{what}: the upstream {ctx['url']} closed the connection before its answer ended ({exc!r})"
    )


def _failed(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return EngineError(f"{what}: the upstream {ctx['url']} failed: {exc!r}")


UPSTREAM = Boundary(
    "httpx",
    [
        ((httpx.ConnectError, httpx.ConnectTimeout), _unreachable),
        (httpx.TimeoutException, _slow),
        ((httpx.RemoteProtocolError, httpx.ReadError), _dropped),
        (httpx.HTTPError, _failed),
    ],
)

# Failures before the upstream answered anything: the request may be sent again.
_NOT_ANSWERED = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)


class UpstreamClient:
    """One upstream over a pooled httpx client; an engine's client adds its routes.
    ``kind`` names the server in start-up errors ("is it llama-server?")."""

    kind = "the upstream"

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
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=limits,
            transport=transport or netio.transport(self.url, limits),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def wait_ready(self, seconds: float) -> None:
        """Return once ``GET /health`` answers 200. An upstream may answer 503
        while it loads its model (llama-server), or not listen yet when started
        beside parley: both are waited for (logged every ``PROGRESS_EVERY`` s),
        at most ``seconds``; then, or at once for an answer that is not an
        upstream's, ``ModelLoadError`` says what was last seen."""
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
                raise ModelLoadError(f"{self.url}/health: it {reason}; is it {self.kind}?")
            now = loop.time()
            if now >= deadline:
                raise ModelLoadError(
                    f"{self.kind} at {self.url} was not ready after {seconds:g} s (it {reason}); "
                    "start it first, or allow it longer with --engine-opt startup_timeout=SECONDS"
                )
            if now >= next_log:
                log.info(
                    "waiting for the upstream",
                    extra={"upstream": self.url, "state": reason, "waited_s": _secs(now - started)},
                )
                next_log = now + PROGRESS_EVERY
            await asyncio.sleep(min(HEALTH_POLL, max(deadline - now, 0)))

    async def healthy(self) -> bool:
        """Whether ``/health`` answers 200 now (the health task's probe)."""
        reason, _ = await self._health(self._connect_timeout)
        return reason is None

    async def _health(self, within: float) -> tuple[str | None, bool]:
        """(None, _) when healthy, else (what was seen, whether waiting cannot help)."""
        limit = httpx.Timeout(within, connect=min(within, self._connect_timeout))
        try:
            response = await self._http.get("/health", timeout=limit)
        except httpx.HTTPError as exc:  # not listening yet, restarting, or hung
            return f"cannot be reached ({type(exc).__name__})", False
        if response.status_code == 200:
            return None, False
        said = f"answers HTTP {response.status_code} {message(detail(response.text))[:200]}"
        # 503 is an upstream loading; other 5xx may be a proxy in front of it, starting.
        return said, response.status_code < 500

    async def get_json(self, path: str) -> dict[str, Any]:
        """``GET path``'s JSON object."""
        what = f"GET {path}"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            response = await self._http.get(path)
            if response.status_code != 200:
                raise self.status_error(response, response.text, what)
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise EngineError(f"{what}: the upstream {self.url} answered no JSON object")
            return data

    async def token_ids(self, path: str, body: dict[str, Any]) -> list[int]:
        """The ``tokens`` list of ``POST path``'s JSON answer (a tokenize endpoint)."""
        what = f"POST {path}"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            async with self.answer(path, body) as response:
                data = loads((await response.aread()).decode(errors="replace"), 0, what, self.url)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise EngineError(f"{what}: the upstream {self.url} answered no token list")
        return tokens

    @contextlib.asynccontextmanager
    async def answer(
        self,
        path: str,
        body: dict[str, Any],
        *,
        on_answer: Callable[[], None] | None = None,
        attempt: Attempt | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """The upstream's 200 to ``POST path``, its headers read, its body to be
        streamed (sent again while it could not be reached or was briefly busy:
        module doc); ``on_answer`` runs when the 200 came, ``attempt`` records
        how it went (for the pool of backends). Call it inside ``UPSTREAM.crossing``."""
        what = f"POST {path}"
        seen = attempt if attempt is not None else Attempt()
        for n in range(self._retries + 1):
            final = n == self._retries
            request = self._http.build_request("POST", path, json=body)
            try:
                response = await self._http.send(request, stream=True)
            except _NOT_ANSWERED as exc:
                seen.unreachable = True
                if final:
                    raise
                wait, reason = 0.1 * 2**n, type(exc).__name__
            else:
                seen.unreachable = False
                try:
                    if response.status_code == 200:
                        seen.answered, seen.status = True, None
                        if on_answer is not None:
                            on_answer()
                        yield response
                        return
                    seen.status = response.status_code
                    text = (await response.aread()).decode(errors="replace")
                finally:
                    await response.aclose()
                error = self.status_error(response, text, what)
                busy = _busy_wait(response)
                if final or busy is None:
                    raise error
                wait, reason = busy, f"HTTP {response.status_code}"
            log.info(
                "upstream request sent again",
                extra={"upstream": self.url, "reason": reason, "attempt": n + 2},
            )
            await asyncio.sleep(wait)

    def status_error(self, response: httpx.Response, text: str, what: str) -> ParleyError:
        """What a status other than 200 means here (module doc); engines extend it."""
        status = response.status_code
        if status in (429, 503):
            retry = response.headers.get("retry-after", "1")
            return OverloadedError(
                f"{what}: the upstream {self.url} is busy (HTTP {status}); retry shortly",
                headers={"retry-after": retry if retry.isdigit() else "1"},
            )
        return upstream_error(detail(text), what, self.url, status=status)


def _busy_wait(response: httpx.Response) -> float | None:
    """Seconds to wait before sending again, for a 429/503 asking for at most
    ``RETRY_WAIT_MAX``; None when it is not worth a retry here."""
    if response.status_code not in (429, 503):
        return None
    retry = response.headers.get("retry-after", "")
    wait = int(retry) if retry.isdigit() else 1
    return float(wait) if wait <= RETRY_WAIT_MAX else None


def detail(text: str) -> Any:
    """The upstream's ``{"error": {"message", "type", ...}}``, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("error", body) if isinstance(body, dict) else text


def message(detail: Any) -> str:
    return str(detail.get("message", detail) if isinstance(detail, dict) else detail)


def upstream_error(detail: Any, what: str, url: str, *, status: int | None = None) -> ParleyError:
    """An ``api_error`` quoting what the upstream said (its message, cut short)."""
    code = f"HTTP {status}: " if status is not None else ""
    return EngineError(f"{what}: the upstream {url} answered {code}{message(detail)[:500]}")


def loads(line: str, start: int, what: str, url: str) -> Any:
    """An SSE line's JSON from ``start``, or the malformed-event error."""
    try:
        return json.loads(line[start:])
    except ValueError:
        raise malformed(line, what, url) from None


def malformed(line: str, what: str, url: str) -> EngineError:
    return EngineError(f"{what}: the upstream {url} sent a malformed event: {line[:200]!r}")


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"

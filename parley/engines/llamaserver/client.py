"""The HTTP side of an upstream llama-server: ``/props`` and streamed ``/completion``.

httpx's exceptions and the upstream's error statuses cross into parley here
(``UPSTREAM``): an upstream that cannot be reached, or answers 429 / 503,
is overload (529 with ``retry-after``: the client retries); a timeout, a
5xx or a refusal of what parley sent is an ``api_error`` naming the
upstream. Nothing here retries: a request is sent once, so no token reaches
a client twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx

from parley.boundary import Boundary
from parley.errors import EngineError, OverloadedError, ParleyError


def _unreachable(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return OverloadedError(
        f"{what}: the upstream {ctx['url']} cannot be reached ({exc}); retry shortly",
        headers={"retry-after": "5"},
    )


def _slow(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return EngineError(f"{what}: the upstream {ctx['url']} did not answer in time ({exc!r})")


def _failed(exc: BaseException, what: str, ctx: Mapping[str, Any]) -> ParleyError:
    return EngineError(f"{what}: the upstream {ctx['url']} failed: {exc!r}")


UPSTREAM = Boundary(
    "httpx",
    [
        ((httpx.ConnectError, httpx.ConnectTimeout), _unreachable),
        (httpx.TimeoutException, _slow),
        ((httpx.HTTPError, json.JSONDecodeError), _failed),
    ],
)


class LlamaServerClient:
    def __init__(
        self, url: str, *, api_key: str | None, timeout: float, connect_timeout: float
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def props(self) -> dict[str, Any]:
        with UPSTREAM.crossing("GET /props", url=self.url):
            response = await self._http.get("/props")
            _check(response, "GET /props", response.text)
            data: dict[str, Any] = response.json()
            return data

    async def completion(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed ``/completion``; leaving the iteration closes
        the request (llama-server then stops decoding it)."""
        with UPSTREAM.crossing("POST /completion", url=self.url):
            async with self._http.stream("POST", "/completion", json=body) as response:
                if response.status_code != 200:
                    _check(response, "POST /completion", (await response.aread()).decode())
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        chunk: dict[str, Any] = json.loads(line[6:])
                        if "error" in chunk:
                            raise _upstream_error(chunk["error"], "POST /completion", self.url)
                        yield chunk
                    elif line.startswith("error: "):
                        raise _upstream_error(json.loads(line[7:]), "POST /completion", self.url)


def _check(response: httpx.Response, what: str, text: str) -> None:
    if response.status_code == 200:
        return
    try:
        detail = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        detail = text
    status = response.status_code
    if status in (429, 503):
        retry = response.headers.get("retry-after", "1")
        raise OverloadedError(
            f"{what}: the upstream {response.url.host} is busy (HTTP {status}); retry shortly",
            headers={"retry-after": retry if retry.isdigit() else "1"},
        )
    raise _upstream_error(detail, what, str(response.request.url), status=status)


def _upstream_error(detail: Any, what: str, url: str, *, status: int | None = None) -> ParleyError:
    message = detail.get("message", detail) if isinstance(detail, dict) else detail
    code = f"HTTP {status}: " if status is not None else ""
    return EngineError(f"{what}: the upstream {url} answered {code}{str(message)[:500]}")

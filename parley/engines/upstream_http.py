"""What every HTTP upstream engine shares: its ``Boundary`` and status rules, and
its server-sent-event stream read as JSON chunks.

httpx's exceptions and the upstream's error statuses cross into parley here
(``UPSTREAM``): an upstream that cannot be reached, or answers 429 / 503, is
overload (529 with ``retry-after``: the client retries); a timeout, a 5xx or
a refusal of what parley sent is an ``api_error`` naming the upstream.
Nothing here retries: a request is sent once, so no token reaches a client
twice.
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


def check(response: httpx.Response, what: str, text: str) -> None:
    """Raise the parley error for an upstream answer that is not a 200."""
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
    raise upstream_error(detail, what, str(response.request.url), status=status)


def upstream_error(detail: Any, what: str, url: str, *, status: int | None = None) -> ParleyError:
    message = detail.get("message", detail) if isinstance(detail, dict) else detail
    code = f"HTTP {status}: " if status is not None else ""
    return EngineError(f"{what}: the upstream {url} answered {code}{str(message)[:500]}")


async def stream_json(
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    url: str,
    refuse: Any = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON chunks of a streamed ``POST path`` (``data: {...}`` lines, up to
    ``data: [DONE]``); leaving the iteration closes the request, which the
    upstream takes as a cancellation. ``refuse(status, detail)`` may turn an
    error answer into a parley error of its own (else ``check`` rules)."""
    what = f"POST {path}"
    with UPSTREAM.crossing(what, url=url):
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                if refuse is not None:
                    refuse(response.status_code, text)
                check(response, what, text)
            async for line in response.aiter_lines():
                if line.startswith("data: [DONE]"):
                    return
                if line.startswith("data:"):
                    chunk: dict[str, Any] = json.loads(line[5:])
                    if "error" in chunk:
                        raise upstream_error(chunk["error"], what, url)
                    yield chunk
                elif line.startswith("error:"):
                    raise upstream_error(json.loads(line[6:]), what, url)

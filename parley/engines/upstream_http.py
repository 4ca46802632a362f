"""What every HTTP upstream engine shares: how the upstream's failures cross into
parley, and its server-sent events read as JSON chunks.

httpx's exceptions cross at ``UPSTREAM``, an error status at
``status_error``::

    the upstream ...                                  parley answers
    cannot be reached (nothing listening, connect     529 overloaded_error + retry-after
      timeout)
    answers 429 or 503 (busy; 503 also while it       529 overloaded_error + its retry-after
      loads its model)
    sends nothing for ``timeout`` s                   504 timeout_error
    answers 400 exceed_context_size_error             400 invalid_request_error, "prompt is
      (llama-server, with both counts)                  too long: N tokens > M maximum"
    answers 400 context_length_exceeded (OpenAI's     400 invalid_request_error, "prompt is
      code, no counts)                                  too long" and the upstream's words
    answers another status (its 500, a 4xx for what   500 api_error naming the upstream
      parley sent), drops the connection, sends
      malformed SSE or an error chunk

504 rather than ``api_error`` for a silent upstream: the API's own
``timeout_error`` says "took too long" (the SDK raises
``GatewayTimeoutError``, and retries it like any 5xx). Each crossing names
``url`` and ``timeout`` in its context, for the messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import httpx

from parley.boundary import Boundary
from parley.errors import (
    EngineError,
    InvalidRequestError,
    OverloadedError,
    ParleyError,
    PromptTooLongError,
    TimeoutError_,
)


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
NOT_ANSWERED = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)


def status_error(response: httpx.Response, text: str, what: str, url: str) -> ParleyError:
    """The parley error for an upstream answer that is not a 200 (table above)."""
    detail = error_detail(text)
    status = response.status_code
    if status in (429, 503):
        retry = response.headers.get("retry-after", "1")
        return OverloadedError(
            f"{what}: the upstream {url} is busy (HTTP {status}); retry shortly",
            headers={"retry-after": retry if retry.isdigit() else "1"},
        )
    if status == 400 and isinstance(detail, dict):
        if detail.get("type") == "exceed_context_size_error":
            tokens, n_ctx = detail.get("n_prompt_tokens"), detail.get("n_ctx")
            if isinstance(tokens, int) and isinstance(n_ctx, int):
                # parley counted the prompt as fitting the context it read at
                # start: the upstream's own count and context are the ones that hold.
                return PromptTooLongError(tokens, context=n_ctx, model=f"the upstream {url}")
        if detail.get("code") == "context_length_exceeded":
            return InvalidRequestError(
                f"prompt is too long for the upstream {url}, which says: "
                f"{error_message(detail)[:300]}"
            )
    return upstream_error(detail, what, url, status=status)


def error_detail(text: str) -> Any:
    """The ``error`` of an ``{"error": {"code", "message", "type", ...}}`` body, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("error", body) if isinstance(body, dict) else text


def error_message(detail: Any) -> str:
    return str(detail.get("message", detail) if isinstance(detail, dict) else detail)


def upstream_error(detail: Any, what: str, url: str, *, status: int | None = None) -> ParleyError:
    code = f"HTTP {status}: " if status is not None else ""
    return EngineError(f"{what}: the upstream {url} answered {code}{error_message(detail)[:500]}")


def loads(line: str, start: int, what: str, url: str) -> Any:
    """The JSON in ``line`` from ``start``, or an ``api_error`` naming the line."""
    try:
        return json.loads(line[start:])
    except ValueError:
        raise malformed(line, what, url) from None


def malformed(line: str, what: str, url: str) -> EngineError:
    return EngineError(f"{what}: the upstream {url} sent a malformed event: {line[:200]!r}")


async def stream_json(
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    url: str,
    read_timeout: float,
    on_answer: Callable[[], None] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON chunks of a streamed ``POST path`` (``data: {...}`` lines, up to
    ``data: [DONE]``); ``on_answer`` runs once the upstream answered 200
    (``read_timeout``: the client's, named in a timeout's message).
    Leaving the iteration closes the request, which the upstream takes as a
    cancellation. Sent once: nothing here retries."""
    what = f"POST {path}"
    with UPSTREAM.crossing(what, url=url, timeout=read_timeout):
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                raise status_error(response, text, what, url)
            if on_answer is not None:
                on_answer()
            async for line in response.aiter_lines():
                if line.startswith("data: [DONE]"):
                    return
                if line.startswith("error:"):
                    raise upstream_error(loads(line, 6, what, url), what, url)
                if not line.startswith("data:"):
                    continue
                chunk = loads(line, 5, what, url)
                if not isinstance(chunk, dict):
                    raise malformed(line, what, url)
                if "error" in chunk:  # vLLM and llama-server end a failed stream so
                    raise upstream_error(chunk["error"], what, url)
                yield chunk

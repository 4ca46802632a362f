"""The HTTP side of an OpenAI-compatible upstream: ``/v1/models``, the probes that
tell its kind, the counting endpoint and streamed ``/v1/chat/completions``.

What each failure becomes and the retries are the upstreams' shared rules
(``upstream.http``: ``UPSTREAM``, ``UpstreamClient``). Chat mode adds::

    the upstream ...                                  parley answers
    answers 400 exceed_context_size_error             400 invalid_request_error, "prompt is
      (llama-server, with both counts)                  too long: N tokens > M maximum"
    answers 400 context_length_exceeded (OpenAI's     400 invalid_request_error, "prompt is
      code, no counts)                                  too long" and the upstream's words

vLLM and SGLang say a prompt is too long only in prose; parley's own check
keeps them from it (the count is exact, ``max_tokens`` capped to the room
left). Counting is a blocking call (``count``): ``prepare`` runs in a worker
thread.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from parley.engines.upstream.http import (
    UPSTREAM,
    UpstreamClient,
    detail,
    loads,
    malformed,
    message,
    upstream_error,
)
from parley.errors import EngineError, InvalidRequestError, ParleyError, PromptTooLongError

CHAT = "/v1/chat/completions"


class ChatClient(UpstreamClient):
    kind = "an OpenAI-compatible server"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retries=retries,
            transport=transport,
        )
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._blocking = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    async def close(self) -> None:
        await super().close()
        self._blocking.close()

    async def probe(self, path: str) -> dict[str, Any] | None:
        """``GET path``'s JSON object, or None for any other answer (which kind of
        server this is: only llama-server has ``/props``, only Ollama ``/api/version``)."""
        with UPSTREAM.crossing(f"GET {path}", url=self.url, timeout=self._timeout):
            response = await self._http.get(path)
        if response.status_code != 200:
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def count(self, path: str, body: dict[str, Any]) -> Any:
        """The counting endpoint's JSON answer to ``body`` (blocking)."""
        what = f"POST {path}"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            response = self._blocking.post(path, json=body)
            if response.status_code != 200:
                raise self.status_error(response, response.text, what)
            try:
                return response.json()
            except ValueError:
                raise EngineError(f"{what}: the upstream {self.url} answered no JSON") from None

    async def chat(
        self, body: dict[str, Any], *, on_answer: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed chat completion, up to ``data: [DONE]``;
        ``on_answer`` runs once the upstream answered 200. Leaving the iteration
        closes the request, which the upstream takes as a cancellation."""
        what = f"POST {CHAT}"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            async with self.answer(CHAT, body, on_answer=on_answer) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: [DONE]"):
                        return
                    if line.startswith("error:"):
                        raise upstream_error(loads(line, 6, what, self.url), what, self.url)
                    if not line.startswith("data:"):
                        continue
                    chunk = loads(line, 5, what, self.url)
                    if not isinstance(chunk, dict):
                        raise malformed(line, what, self.url)
                    if "error" in chunk:  # vLLM and llama-server end a failed stream so
                        raise upstream_error(chunk["error"], what, self.url)
                    yield chunk

    def status_error(self, response: httpx.Response, text: str, what: str) -> ParleyError:
        said = detail(text)
        if response.status_code == 400 and isinstance(said, dict):
            if said.get("type") == "exceed_context_size_error":
                tokens, n_ctx = said.get("n_prompt_tokens"), said.get("n_ctx")
                if isinstance(tokens, int) and isinstance(n_ctx, int):
                    return PromptTooLongError(
                        tokens, context=n_ctx, model=f"the upstream {self.url}"
                    )
            if said.get("code") == "context_length_exceeded":
                return InvalidRequestError(
                    f"prompt is too long for the upstream {self.url}, which says: "
                    f"{message(said)[:300]}"
                )
        return super().status_error(response, text, what)

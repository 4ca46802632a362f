"""The HTTP side of an upstream llama-server: ``/health``, ``/props`` and streamed ``/completion``.

What each failure becomes, the retries and the start-up wait are the
upstreams' shared rules (``upstream.http``: ``UPSTREAM``,
``UpstreamClient``). llama-server adds one::

    the upstream ...                                  parley answers
    answers 400 exceed_context_size_error             400 invalid_request_error, "prompt is
                                                        too long: N tokens > M maximum"
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from parley.engines.upstream.backends import Attempt
from parley.engines.upstream.http import (
    UPSTREAM,
    UpstreamClient,
    detail,
    loads,
    malformed,
    upstream_error,
)
from parley.errors import EngineError, ParleyError, PromptTooLongError


class LlamaServerClient(UpstreamClient):
    kind = "llama-server"

    async def props(self) -> dict[str, Any]:
        return await self.get_json("/props")

    async def tokenize(self, text: str) -> list[int]:
        """llama-server's token ids of ``text`` (special-token text parsed, no BOS)."""
        body = {"content": text, "add_special": False, "parse_special": True}
        return await self.token_ids("/tokenize", body)

    async def completion(
        self,
        body: dict[str, Any],
        *,
        on_answer: Callable[[], None] | None = None,
        attempt: Attempt | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed ``/completion``, the last one with ``stop``
        true; ``on_answer`` runs once llama-server answered 200 (at once, before
        its prefill), ``attempt`` records how it went. Leaving the iteration
        closes the request (llama-server then stops decoding it)."""
        what = "POST /completion"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            answer = self.answer("/completion", body, on_answer=on_answer, attempt=attempt)
            async with answer as response:
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

    def status_error(self, response: httpx.Response, text: str, what: str) -> ParleyError:
        said = detail(text)
        too_long = isinstance(said, dict) and said.get("type") == "exceed_context_size_error"
        if response.status_code == 400 and too_long:
            tokens, n_ctx = said.get("n_prompt_tokens"), said.get("n_ctx")
            if isinstance(tokens, int) and isinstance(n_ctx, int):
                # parley counted the prompt as fitting the context /props gave at
                # start: the upstream's own count and context are the ones that hold.
                return PromptTooLongError(tokens, context=n_ctx, model=f"the upstream {self.url}")
        return super().status_error(response, text, what)


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

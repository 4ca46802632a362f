"""The HTTP side of an upstream vLLM: ``/v1/models``, ``/tokenize`` and streamed
``/v1/completions``, over the upstreams' shared client (``upstream.http``:
what each failure becomes, retries before the response began, the ``/health``
wait at start)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from parley.engines.upstream.backends import Attempt
from parley.engines.upstream.http import (
    UPSTREAM,
    UpstreamClient,
    loads,
    malformed,
    upstream_error,
)
from parley.errors import EngineError


class VllmClient(UpstreamClient):
    kind = "vLLM"

    async def models(self) -> list[dict[str, Any]]:
        data = (await self.get_json("/v1/models")).get("data")
        if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
            raise EngineError(f"GET /v1/models: the upstream {self.url} lists no models")
        return data

    async def tokenize(self, model: str, text: str) -> list[int]:
        """vLLM's token ids of ``text`` (no special tokens added)."""
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        return await self.token_ids("/tokenize", body)

    async def completions(
        self,
        body: dict[str, Any],
        *,
        on_answer: Callable[[], None] | None = None,
        attempt: Attempt | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed ``/v1/completions`` (the usage chunk last);
        ``on_answer`` runs once vLLM answered 200, ``attempt`` records how it
        went. Leaving the iteration closes the request (vLLM then aborts it)."""
        what = "POST /v1/completions"
        with UPSTREAM.crossing(what, url=self.url, timeout=self._timeout):
            answer = self.answer("/v1/completions", body, on_answer=on_answer, attempt=attempt)
            async with answer as response:
                done = False
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        yield _chunk(line, what, self.url)
                if not done:
                    raise EngineError(
                        f"{what}: the upstream {self.url} ended its stream before the last chunk"
                    )


def _chunk(line: str, what: str, url: str) -> dict[str, Any]:
    """One SSE line's chunk, or the upstream's error."""
    chunk = loads(line, 6, what, url)
    if not isinstance(chunk, dict):
        raise malformed(line, what, url)
    if "error" in chunk:  # a failure after the stream began
        raise upstream_error(chunk["error"], what, url)
    if chunk.get("object") == "error":  # vLLM's older error shape
        raise upstream_error(chunk, what, url)
    choices = chunk.get("choices", [])
    if not isinstance(choices, list):
        raise malformed(line, what, url)
    for choice in choices:
        ids = (choice.get("token_ids") or []) if isinstance(choice, dict) else None
        if (
            not isinstance(choice, dict)
            or not isinstance(choice.get("text", ""), str)
            or not isinstance(ids, list)
            or not all(isinstance(t, int) for t in ids)
        ):
            raise malformed(line, what, url)
    return chunk

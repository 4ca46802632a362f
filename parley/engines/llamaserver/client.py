"""The HTTP side of an upstream llama-server: ``/props`` and streamed ``/completion``.

Its errors cross into parley at the shared upstream boundary
(``upstream_http.UPSTREAM``: unreachable or busy is a 529, anything else an
``api_error`` naming the upstream). Nothing here retries.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from parley.engines.upstream_http import UPSTREAM, check, stream_json


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
            check(response, "GET /props", response.text)
            data: dict[str, Any] = response.json()
            return data

    def completion(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streamed ``/completion``; leaving the iteration closes
        the request (llama-server then stops decoding it)."""
        return stream_json(self._http, "/completion", body, url=self.url)

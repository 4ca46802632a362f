"""Per-key rate limits: token buckets, headers on every response, 429 with retry-after."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import pytest

from parley.errors import RateLimitError
from parley.ratelimit import RateLimiter
from tests.conftest import RULES, Server

HI = [{"role": "user", "content": "hello"}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_buckets_refill_continuously_and_output_is_charged_after() -> None:
    clock = Clock()
    limiter = RateLimiter(requests=2, output_tokens=100, clock=clock, wall=lambda: 0.0)
    limiter.admit("k", 10)
    limiter.admit("k", 10)
    with pytest.raises(RateLimitError) as refused:
        limiter.admit("k", 10)
    assert refused.value.headers["retry-after"] == "30"  # one request every 30 s
    assert refused.value.headers["anthropic-ratelimit-requests-remaining"] == "0"
    limiter.admit("other", 10)  # keys are separate
    clock.now += 30
    limiter.admit("k", 10)
    limiter.spend_output("k", 160)  # the bucket goes below zero
    clock.now += 60  # refills 2 requests and 100 output tokens: still at -60 + 100 = 40
    limiter.admit("k", 10)
    limiter.spend_output("k", 100)  # now at -60
    with pytest.raises(RateLimitError, match="output tokens per minute") as waiting:
        limiter.admit("k", 10)
    assert waiting.value.headers["retry-after"] == "37"  # 61 tokens at 100/min


@pytest.fixture(scope="module")
def limited(server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--api-key",
        "key-a",
        "--api-key",
        "key-b",
        "--rate-requests",
        "60",
        "--rate-input-tokens",
        "2000",
    )


def test_every_response_carries_the_headers_and_429_comes_with_retry_after(
    limited: Server,
) -> None:
    client = limited.client(api_key="key-a")
    raw = client.messages.with_raw_response.create(model="scripted", max_tokens=5, messages=HI)
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert int(headers["anthropic-ratelimit-requests-remaining"]) == 59
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "2000"
    assert headers["anthropic-ratelimit-tokens-limit"] == "2000"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    with pytest.raises(anthropic.RateLimitError) as refused:
        for _ in range(61):
            client.messages.create(model="scripted", max_tokens=5, messages=HI)
    error = refused.value
    assert error.status_code == 429
    assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    # Another key has its own allowance.
    other = limited.client(api_key="key-b")
    assert other.messages.create(model="scripted", max_tokens=5, messages=HI).content
    # The SDK's own retry (it honours retry-after) gets through.
    patient = limited.client(api_key="key-a", max_retries=3)
    assert patient.messages.create(model="scripted", max_tokens=5, messages=HI).content
    counted = client.messages.with_raw_response.count_tokens(model="scripted", messages=HI)
    assert "anthropic-ratelimit-requests-limit" in counted.headers


def test_input_tokens_per_minute(limited: Server) -> None:
    client = limited.client(api_key="key-b")
    big = [{"role": "user", "content": " ".join(["word"] * 1500)}]
    client.messages.create(model="scripted", max_tokens=5, messages=big)
    with pytest.raises(anthropic.RateLimitError, match="input tokens per minute"):
        client.messages.create(model="scripted", max_tokens=5, messages=big)


def test_other_endpoints_and_errors_carry_the_headers_too(limited: Server) -> None:
    import httpx

    key = {"x-api-key": "key-b"}
    models = httpx.get(f"{limited.url}/v1/models", headers=key)
    assert models.headers["anthropic-ratelimit-requests-limit"] == "60"
    bad = httpx.post(f"{limited.url}/v1/messages", json={"model": "scripted"}, headers=key)
    assert bad.status_code == 400
    assert "anthropic-ratelimit-input-tokens-remaining" in bad.headers
    assert len(bad.headers.get_list("anthropic-ratelimit-requests-limit")) == 1

"""Per-key rate limits: token buckets, headers on every response, 429 with retry-after."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

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
    limiter.admit_request("k")
    limiter.admit_request("k")
    with pytest.raises(RateLimitError) as refused:
        limiter.admit_request("k")
    assert refused.value.headers["retry-after"] == "30"  # one request every 30 s
    assert limiter.ready_in("k") == pytest.approx(30)
    assert refused.value.headers["anthropic-ratelimit-requests-remaining"] == "0"
    limiter.admit_request("other")  # keys are separate
    clock.now += 30
    limiter.admit_request("k")
    limiter.spend_output("k", 160)  # the bucket goes below zero
    clock.now += 60  # refills 2 requests and 100 output tokens: still at -60 + 100 = 40
    limiter.admit_request("k")
    limiter.spend_output("k", 100)  # now at -60
    with pytest.raises(RateLimitError, match="output tokens per minute") as waiting:
        limiter.admit_request("k")
    assert waiting.value.headers["retry-after"] == "37"  # 61 tokens at 100/min


def test_input_tokens_are_taken_once_counted_and_the_request_stays_spent() -> None:
    clock = Clock()
    limiter = RateLimiter(requests=10, input_tokens=1000, clock=clock, wall=lambda: 0.0)
    limiter.admit_request("k")
    limiter.admit_input("k", 900)
    limiter.admit_request("k")  # 100 input tokens left: a request may still try
    with pytest.raises(RateLimitError, match="1000 input tokens per minute") as refused:
        limiter.admit_input("k", 500)  # 400 missing at 1000/min: 24 s
    assert refused.value.headers["retry-after"] == "24"
    assert limiter.ready_in("k", 500) == pytest.approx(24)
    headers = limiter.headers("k")
    assert headers["anthropic-ratelimit-requests-remaining"] == "8"  # the refused one counted
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "100"
    clock.now += 54  # a prompt past a minute's worth waits for a full bucket only
    limiter.admit_input("k", 5000)
    with pytest.raises(RateLimitError, match="input tokens per minute"):
        limiter.admit_request("k")  # the input bucket is in debt: nothing may start


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
    # Token counting has its own limit (twice --rate-requests by default), not Messages'.
    counted = client.messages.with_raw_response.count_tokens(model="scripted", messages=HI)
    assert counted.headers["anthropic-ratelimit-requests-limit"] == "120"
    assert int(counted.headers["anthropic-ratelimit-requests-remaining"]) == 119
    assert "anthropic-ratelimit-input-tokens-limit" not in counted.headers


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


class Origin(http.server.BaseHTTPRequestHandler):
    """A document server that counts how often it is asked."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"a document"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/doc.txt"
    server.shutdown()


@pytest.fixture(scope="module")
def strict(server_factory: Callable[..., Server]) -> Server:
    """Two requests a key a minute (one every 30 s: none refills during a test),
    three token counts; documents by URL from the loopback origin."""
    keys = [arg for key in ("doc", "counter", "alice", "bob", "eve") for arg in ("--api-key", key)]
    return server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        *keys,
        "--rate-requests",
        "2",
        "--rate-input-tokens",
        "1000",
        "--rate-count-tokens",
        "3",
        "--allow-url-sources",
        "--url-allow",
        "127.0.0.1",
    )


def test_a_key_at_its_request_limit_costs_no_rendering(strict: Server, origin: str) -> None:
    """The request bucket is checked before ``prepare``: the refused request's
    document is never fetched (nor its prompt rendered or tokenized)."""
    client = strict.client(api_key="doc")
    with_doc = [
        {
            "role": "user",
            "content": [
                {"type": "document", "source": {"type": "url", "url": origin}},
                {"type": "text", "text": "Summarise."},
            ],
        }
    ]
    client.messages.create(model="scripted", max_tokens=5, messages=with_doc)  # type: ignore[arg-type]
    assert Origin.hits == 1
    client.messages.create(model="scripted", max_tokens=5, messages=HI)  # the last request
    with pytest.raises(anthropic.RateLimitError, match="2 requests per minute") as refused:
        client.messages.create(model="scripted", max_tokens=5, messages=with_doc)  # type: ignore[arg-type]
    assert Origin.hits == 1
    assert refused.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    # Another key is served normally.
    other = strict.client(api_key="eve")
    assert other.messages.create(model="scripted", max_tokens=5, messages=HI).content


def test_count_tokens_has_its_own_request_limit(strict: Server) -> None:
    """As the API meters it: its own requests a minute; it spends neither the
    Messages requests nor the input tokens of the key."""
    client = strict.client(api_key="counter")
    big = [{"role": "user", "content": " ".join(["word"] * 900)}]
    for left in (2, 1, 0):
        counted = client.messages.with_raw_response.count_tokens(model="scripted", messages=big)
        assert counted.headers["anthropic-ratelimit-requests-limit"] == "3"
        assert counted.headers["anthropic-ratelimit-requests-remaining"] == str(left)
        assert counted.parse().input_tokens > 900
    with pytest.raises(anthropic.RateLimitError, match="3 token counting requests") as refused:
        client.messages.count_tokens(model="scripted", messages=HI)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.response.headers["anthropic-ratelimit-requests-limit"] == "3"
    # Messages are untouched: both requests left, and 1,000 input tokens, enough
    # for the prompt counted three times.
    created = client.messages.with_raw_response.create(model="scripted", max_tokens=5, messages=big)
    assert created.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert created.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert created.parse().usage.input_tokens > 900
    # Another key counts normally.
    assert strict.client(api_key="eve").messages.count_tokens(model="scripted", messages=HI)

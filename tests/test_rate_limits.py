"""Per-key rate limits: token buckets, headers on every response, 429 with retry-after;
count_tokens metered on its own; batch requests charged to their owner's buckets."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import sqlalchemy as sa

from parley.batches.store import BatchStore
from parley.batches.worker import BatchWorker
from parley.catalog import Catalog
from parley.db.schema import batch_requests
from parley.engines.scripted import Script, ScriptedEngine
from parley.errors import RateLimitError
from parley.ratelimit import RateLimiter
from parley.service import MessagesService
from parley.thinking import Signer
from tests.conftest import RULES, Server, db_env
from tests.test_batches import request, wait_ended

HI = [{"role": "user", "content": "hello"}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_limiter(database_url: str | None, tmp_path: Path) -> Iterator[Callable[..., RateLimiter]]:
    """Limiters on this process's buckets (sqlite: the default), or on buckets in a
    PostgreSQL database as replicas share them; both on ``clock``."""
    opened: list[Any] = []

    def make(clock: Clock, **limits: int) -> RateLimiter:
        buckets = None
        if database_url is not None:
            from parley.db.buckets import SharedBuckets

            store = BatchStore(database_url)
            buckets = SharedBuckets(store, "test", clock=clock)
            opened.extend([buckets, store])
        return RateLimiter(**limits, clock=clock, wall=lambda: 0.0, buckets=buckets)

    yield make
    for thing in opened:
        thing.close()


def test_buckets_refill_continuously_and_output_is_charged_after(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    clock = Clock()
    limiter = make_limiter(clock, requests=2, output_tokens=100)
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


def test_input_tokens_are_taken_once_counted_and_the_request_stays_spent(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    clock = Clock()
    limiter = make_limiter(clock, requests=10, input_tokens=1000)
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
    # The bucket refills one request a second: unless each request takes longer
    # than that, it runs dry within the loop (61 requests were not always enough
    # on a busy machine).
    with pytest.raises(anthropic.RateLimitError) as refused:
        for _ in range(1000):
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
    server.server_close()


@pytest.fixture(scope="module")
def strict(server_factory: Callable[..., Server], module_database_url: str | None) -> Server:
    """Two requests a key a minute (one every 30 s: none refills during a test),
    three token counts; documents by URL from the loopback origin. In memory,
    and in PostgreSQL (the buckets replicas share)."""
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
        env=db_env(module_database_url),
    )


def test_a_key_at_its_request_limit_costs_no_rendering(strict: Server, origin: str) -> None:
    """The request bucket is checked before ``prepare``: the refused request's
    document is never fetched (nor its prompt rendered or tokenized)."""
    Origin.hits = 0  # (the origin serves both databases' runs)
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


def test_batch_requests_spend_their_owners_bucket_and_wait_for_it(strict: Server) -> None:
    """A key at its request limit submits a batch: its requests wait (not errored,
    no attempt spent) while a later batch and requests of another key are
    served; the key's interactive requests see the same empty bucket."""
    alice, bob = strict.client(api_key="alice"), strict.client(api_key="bob")
    for _ in range(2):
        alice.messages.create(model="scripted", max_tokens=5, messages=HI)
    waiting = alice.messages.batches.create(
        requests=[request(f"a{i}", f"alice {i}") for i in range(3)]  # type: ignore[misc]
    )
    served = bob.messages.batches.create(requests=[request("b", "bob")])  # type: ignore[list-item]
    # The worker claims the older batch first: by the time bob's has ended, alice's
    # requests have been tried against her bucket and put back.
    assert wait_ended(bob, served.id).request_counts.succeeded == 1
    raw = alice.messages.batches.with_raw_response.retrieve(waiting.id)
    counts = raw.parse().request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (3, 0, 0)
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(anthropic.RateLimitError):
        alice.messages.create(model="scripted", max_tokens=5, messages=HI)
    # Bob's batch request came out of his bucket: one of two left, and it serves him.
    created = bob.messages.with_raw_response.create(model="scripted", max_tokens=5, messages=HI)
    assert created.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_a_waiting_owners_batch_runs_when_the_bucket_refills(tmp_path: Path) -> None:
    """In process, with the limiter's clock in hand: an owner out of requests and
    one out of input tokens wait, another owner is not stalled, and each waiting
    request runs once its bucket allows, at the cost of one attempt in all."""
    clock = Clock()
    limiter = RateLimiter(requests=2, input_tokens=100, clock=clock, wall=lambda: 0.0)
    limiter.admit_request("alice")
    limiter.admit_request("alice")  # alice: no requests left
    limiter.admit_request("carol")
    limiter.admit_input("carol", 80)  # carol: 20 input tokens left, her prompt has more
    store = BatchStore.in_data_dir(tmp_path)
    service = MessagesService(
        Catalog([ScriptedEngine(Script())], {}),
        ping_interval=5,
        signer=Signer.from_data_dir(tmp_path),
        redact_thinking=False,
    )

    def make(owner: str, texts: list[str]) -> str:
        items = [
            (f"{owner}{i}", json.dumps(request("x", t)["params"])) for i, t in enumerate(texts)
        ]
        return store.create(f"msgbatch_{owner}", owner, items, expires_in=3600).id

    async def until(owner: str, batch: str, succeeded: int) -> None:
        deadline = time.monotonic() + 30
        while store.get(batch, owner).counts["succeeded"] < succeeded:
            assert time.monotonic() < deadline, store.get(batch, owner)
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        a = make("alice", ["one", "two", "three"])
        c = make("carol", [" ".join(["word"] * 40)])
        b = make("bob", ["hello", "there"])
        worker = BatchWorker(
            store, service, concurrency=4, retention=3600, tick=0.05, limiter=limiter
        )
        worker.start()
        try:
            await until("bob", b, 2)  # not stalled behind the older, waiting batches
            assert store.get(a, "alice").counts["processing"] == 3
            assert store.get(c, "carol").counts["processing"] == 1
            clock.now += 30  # one request back for alice, 50 input tokens for carol
            await until("alice", a, 1)
            await until("carol", c, 1)
            clock.now += 60  # alice's bucket is full again: her last two run
            await until("alice", a, 3)
        finally:
            await worker.stop()

    asyncio.run(scenario())
    with store._reading() as conn:
        spent = {r.custom_id: r.attempts for r in conn.execute(sa.select(batch_requests))}
    assert spent == {"alice0": 1, "alice1": 1, "alice2": 1, "carol0": 1, "bob0": 1, "bob1": 1}
    assert limiter.headers("alice")["anthropic-ratelimit-requests-remaining"] == "0"
    store.close()

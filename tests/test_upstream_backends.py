"""``engines.upstream.backends``: the choice of a backend and its circuit breaker.

Fake backends (named clients whose requests are scripted) and a fake clock:
no socket, no sleep. The end-to-end behaviour behind a real parley is in
``test_upstream_pool.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from parley.engines.llamacpp.prefix_cache import Breakpoint
from parley.engines.upstream.backends import (
    AFFINITY_TOKENS,
    Attempt,
    Backend,
    Pool,
    affinity_key,
)
from parley.errors import EngineError, OverloadedError, ParleyError, PromptTooLongError


@dataclass
class FakeClient:
    url: str
    # what its next requests do: "ok", or (Attempt fields, error) of a failure
    script: list[str] = field(default_factory=list)
    sent: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int = 3, **kwargs: object) -> tuple[Pool[FakeClient], Clock]:
    clock = Clock()
    clients = [FakeClient(f"http://b{i}.test") for i in range(n)]
    return Pool(clients, clock=clock, **kwargs), clock  # type: ignore[arg-type]


def _by_url(pool: Pool[FakeClient], url: str) -> Backend[FakeClient]:
    return next(b for b in pool.backends if b.url == url)


def _key(i: int) -> bytes:
    key = affinity_key(list(range(i, i + 10)), [Breakpoint(10)])
    assert key is not None
    return key


# --- the affinity key ---------------------------------------------------------------


def test_the_key_is_the_prefix_up_to_the_first_breakpoint() -> None:
    tokens = list(range(100))
    key = affinity_key(tokens, [Breakpoint(40), Breakpoint(20)])
    assert key == affinity_key(tokens[:20] + [7] * 50, [Breakpoint(20)])
    assert key != affinity_key(tokens, [Breakpoint(21)])


def test_without_a_breakpoint_a_long_prompts_head_is_the_key_a_short_one_has_none() -> None:
    long = list(range(AFFINITY_TOKENS + 50))
    assert affinity_key(long, []) == affinity_key([*long[:AFFINITY_TOKENS], 1, 2], [])
    assert affinity_key(long[: AFFINITY_TOKENS - 1], []) is None


# --- the choice ---------------------------------------------------------------------


def test_a_key_keeps_its_backend_and_keys_spread() -> None:
    pool, _ = _pool(3)
    chosen = {i: pool.choose(_key(i)) for i in range(60)}
    assert all(pool.choose(_key(i)) is chosen[i] for i in range(60))
    assert len({id(b) for b in chosen.values()}) == 3


def test_rendezvous_moves_only_the_keys_of_a_backend_that_left() -> None:
    pool, _ = _pool(3)
    before = {i: pool.choose(_key(i)) for i in range(60)}
    gone = pool.backends[0]
    pool.open(gone)
    for i, backend in before.items():
        after = pool.choose(_key(i))
        assert after is not gone
        if backend is not gone:
            assert after is backend


def test_affinity_yields_to_the_least_loaded_past_the_slack() -> None:
    pool, _ = _pool(2, slack=2)
    key = _key(1)
    home = pool.choose(key)
    assert home is not None
    other = next(b for b in pool.backends if b is not home)
    home.in_flight = 2
    assert pool.choose(key) is home  # 2 beyond the least loaded: within the slack
    home.in_flight = 3
    assert pool.choose(key) is other
    other.in_flight = 1
    assert pool.choose(key) is home


def test_without_a_key_the_least_loaded_and_turns_among_equals() -> None:
    pool, _ = _pool(3)
    seen = [pool.choose(None) for _ in range(3)]
    assert len({id(b) for b in seen}) == 3
    pool.backends[0].in_flight = pool.backends[1].in_flight = 1
    assert pool.choose(None) is pool.backends[2]


# --- the breaker --------------------------------------------------------------------


def test_failures_in_a_row_open_the_circuit_a_success_between_resets_them() -> None:
    pool, _ = _pool(2, failures=3)
    backend = pool.backends[0]
    pool.failed(backend)
    pool.failed(backend)
    pool.succeeded(backend)
    pool.failed(backend)
    pool.failed(backend)
    assert backend.state == "closed"
    pool.failed(backend)
    assert backend.state == "open"
    assert all(pool.choose(_key(i)) is pool.backends[1] for i in range(20))


def test_after_the_cooldown_one_trial_request_then_closed_or_open_again() -> None:
    pool, clock = _pool(2, failures=1, cooldown=30)
    backend, other = pool.backends
    pool.failed(backend)
    clock.now += 29.9
    assert pool.down() == [backend] and backend.state == "open"
    clock.now += 0.1
    assert pool.stats()[0]["state"] == "half-open"
    backend.trial = True  # its one request is under way: no other goes there
    assert all(pool.choose(_key(i)) is other for i in range(20))
    pool.failed(backend)  # the trial failed: open for another cooldown
    assert backend.state == "open" and not backend.trial
    clock.now += 30
    assert pool.choose(_key(0), exclude=[other]) is backend
    pool.succeeded(backend)
    assert backend.state == "closed" and pool.down() == []


def test_the_health_probe_closes_an_open_circuit_before_its_cooldown() -> None:
    pool, _ = _pool(2, failures=1, cooldown=30)
    pool.failed(pool.backends[0])
    pool.recovered(pool.backends[0])
    assert pool.backends[0].state == "closed" and pool.backends[0].failures == 0


def test_a_single_backend_is_always_tried() -> None:
    pool, _ = _pool(1, failures=1)
    pool.failed(pool.backends[0])
    assert pool.choose(None) is pool.backends[0]


# --- failover (Pool.stream) ---------------------------------------------------------

UNREACHABLE = (Attempt(unreachable=True), OverloadedError("cannot be reached"))
BUSY = (Attempt(status=429), OverloadedError("busy (HTTP 429)"))
LOADING = (Attempt(status=503), OverloadedError("busy (HTTP 503)"))
BOOM = (Attempt(status=500), EngineError("HTTP 500"))
TOO_LONG = (Attempt(status=400), PromptTooLongError(10, context=5, model="m"))
BROKE = (Attempt(answered=True), EngineError("closed the connection"))
FAILURES = {
    "unreachable": UNREACHABLE,
    "busy": BUSY,
    "loading": LOADING,
    "500": BOOM,
    "400": TOO_LONG,
}


def _scripted(
    outcomes: dict[str, list[tuple[Attempt, ParleyError] | None]],
) -> tuple[list[str], object]:
    """A ``call`` whose backend ``url`` fails as ``outcomes[url]`` says in turn
    (None: answers "a", "b"); and the list of URLs called."""
    calls: list[str] = []

    async def call(client: FakeClient, attempt: Attempt) -> AsyncGenerator[str, None]:
        calls.append(client.url)
        script = outcomes.get(client.url) or [None]
        outcome = script.pop(0) if len(script) > 1 else script[0]
        if outcome is not None:
            seen, error = outcome
            attempt.answered, attempt.status = seen.answered, seen.status
            attempt.unreachable = seen.unreachable
            if seen.answered:
                yield "a"
            raise error
        attempt.answered = True
        yield "a"
        yield "b"

    return calls, call


def _run(pool: Pool[FakeClient], call: object, key: bytes | None, attempts: int = 3) -> list[str]:
    async def run() -> list[str]:
        return [x async for x in pool.stream(key, call, attempts=attempts)]  # type: ignore[arg-type]

    return asyncio.run(run())


@pytest.mark.parametrize("name", ["unreachable", "busy", "loading"])
def test_a_request_not_answered_goes_to_another_backend(name: str) -> None:
    pool, _ = _pool(2)
    key = _key(3)
    home = pool.choose(key)
    assert home is not None
    calls, call = _scripted({home.url: [FAILURES[name]]})
    assert _run(pool, call, key) == ["a", "b"]
    assert calls[0] == home.url and calls[1] != home.url and len(calls) == 2
    assert home.failures == (0 if name == "busy" else 1)  # a 429 says busy, not broken
    assert all(b.in_flight == 0 for b in pool.backends)


@pytest.mark.parametrize("name", ["500", "400"])
def test_other_refusals_are_final(name: str) -> None:
    pool, _ = _pool(2)
    key = _key(3)
    home = pool.choose(key)
    assert home is not None
    calls, call = _scripted({home.url: [FAILURES[name]]})
    with pytest.raises(type(FAILURES[name][1])):
        _run(pool, call, key)
    assert calls == [home.url]
    assert home.failures == (1 if name == "500" else 0)  # a 4xx is the request's fault


def test_once_the_upstream_answered_a_failure_is_final() -> None:
    pool, _ = _pool(2)
    key = _key(3)
    home = pool.choose(key)
    assert home is not None
    calls, call = _scripted({home.url: [BROKE]})
    got: list[str] = []

    async def run() -> None:
        async for item in pool.stream(key, call, attempts=3):  # type: ignore[arg-type]
            got.append(item)

    with pytest.raises(EngineError, match="closed the connection"):
        asyncio.run(run())
    assert got == ["a"] and calls == [home.url] and home.failures == 1


def test_each_backend_is_tried_once_then_the_last_error() -> None:
    pool, _ = _pool(2)
    calls, call = _scripted({b.url: [UNREACHABLE] for b in pool.backends})
    with pytest.raises(OverloadedError, match="cannot be reached"):
        _run(pool, call, None, attempts=5)
    assert sorted(calls) == sorted(b.url for b in pool.backends)


def test_every_circuit_open_is_a_529_saying_so() -> None:
    pool, clock = _pool(2, failures=1, cooldown=30)
    for backend in pool.backends:
        pool.failed(backend)
    clock.now += 10
    calls, call = _scripted({})
    with pytest.raises(OverloadedError, match="circuits open") as caught:
        _run(pool, call, None)
    assert calls == [] and caught.value.headers["retry-after"] == "20"


def test_failures_through_stream_open_the_circuit_and_traffic_moves() -> None:
    pool, _ = _pool(2, failures=2)
    key = _key(5)
    home = pool.choose(key)
    assert home is not None
    calls, call = _scripted({home.url: [UNREACHABLE]})
    for _ in range(2):
        assert _run(pool, call, key) == ["a", "b"]
    assert home.state == "open"
    calls.clear()
    assert _run(pool, call, key) == ["a", "b"]
    assert home.url not in calls  # not even tried now


def test_a_half_open_trial_that_succeeds_closes_the_circuit() -> None:
    pool, clock = _pool(2, failures=1, cooldown=5)
    key = _key(5)
    home = pool.choose(key)
    assert home is not None
    pool.failed(home)
    clock.now += 5
    calls, call = _scripted({})
    assert _run(pool, call, key) == ["a", "b"]
    assert calls == [home.url] and home.state == "closed"


def test_closing_the_stream_early_is_no_failure() -> None:
    pool, _ = _pool(2)
    _, call = _scripted({})

    async def run() -> None:
        stream = pool.stream(None, call, attempts=3)  # type: ignore[arg-type]
        assert await anext(stream) == "a"
        await stream.aclose()

    asyncio.run(run())
    assert all(b.in_flight == 0 and b.failures == 0 for b in pool.backends)

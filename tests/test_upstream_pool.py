"""parley in front of several llama-servers serving one model (``url=A,B``).

Two fake llama-servers (``tests/fake_llama_server.py``, real sockets, their
request counters) behind one parley subprocess, driven by the SDK with
strict validation: requests sharing a prefix up to a cache breakpoint meet
on one backend, different prefixes spread, a backend that is down is
skipped before anything reached the client and comes back once parley's
health check sees it. Then two real llama-servers: the second request with
the same cached prefix reads the cache because it went where the first did.
The chooser and breaker themselves are in ``test_upstream_backends.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import (
    Server,
    embedded_gguf,
    free_port,
    llama_server_process,
    wait_for,
)
from tests.fake_llama_server import ANSWER, FakeLlamaServer

MODEL = "fake-pool"
HI = [{"role": "user", "content": "Say hello."}]
KEYS = 16  # prefixes of their own: all on one of two backends is a 1 in 32768 chance


@pytest.fixture(scope="module")
def gguf() -> Path:
    return embedded_gguf()


@pytest.fixture(scope="module")
def fakes(gguf: Path) -> Iterator[list[FakeLlamaServer]]:
    servers = [FakeLlamaServer(gguf, port=free_port()).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.close()


def _args(urls: list[str], gguf: Path, *extra: str) -> list[str]:
    return [
        "--engine", "llamaserver",
        "--engine-opt", f"url={','.join(urls)}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", f"model_name={MODEL}",
        "--engine-opt", "health_interval=0.1",
        "--engine-opt", "breaker_failures=2",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def parley(
    fakes: list[FakeLlamaServer], gguf: Path, server_factory: Callable[..., Server]
) -> Server:
    return server_factory(*_args([f.url for f in fakes], gguf))


@pytest.fixture(autouse=True)
def _fresh(fakes: list[FakeLlamaServer], parley: Server) -> Iterator[None]:
    for fake in fakes:
        if fake.url and fake._server is None:
            fake.start()
        fake.reset()
    wait_for(lambda: _states(parley) == ["closed", "closed"], "both backends to be up")
    yield
    # Nothing parley gave up on stays open upstream.
    wait_for(lambda: all(f.in_flight == 0 for f in fakes), "the fakes' requests to end")
    assert "Traceback" not in parley.log(), parley.log()[-3000:]


def _backends(server: Server, model: str = MODEL) -> list[dict[str, Any]]:
    backends: list[dict[str, Any]] = server.stats()[model]["backends"]
    return backends


def _states(server: Server) -> list[str]:
    return [b["state"] for b in _backends(server)]


def _system(i: int) -> list[dict[str, Any]]:
    """A system prompt of its own per ``i``, ending in a cache breakpoint."""
    return [
        {
            "type": "text",
            "text": f"You are assistant number {i}. Answer briefly and politely.",
            "cache_control": {"type": "ephemeral"},
        }
    ]


def _ask(client: anthropic.Anthropic, i: int, question: str = "Say hello.") -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=50,
        system=_system(i),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": question}],
    )
    assert message.content[0].type == "text" and message.content[0].text == ANSWER


def _counts(fakes: list[FakeLlamaServer]) -> list[int]:
    return [f.requests for f in fakes]


def test_requests_sharing_a_prefix_meet_on_one_backend(
    fakes: list[FakeLlamaServer], parley: Server
) -> None:
    client = parley.client()
    for question in ["Say hello.", "Say goodbye.", "What is 2 + 2?", "Name a colour."]:
        _ask(client, 7, question)
    assert sorted(_counts(fakes)) == [0, 4]


def test_different_prefixes_spread(fakes: list[FakeLlamaServer], parley: Server) -> None:
    client = parley.client()
    for i in range(KEYS):
        _ask(client, i)
    assert sum(_counts(fakes)) == KEYS and min(_counts(fakes)) > 0


def test_a_backend_that_is_down_is_skipped_and_comes_back_after_its_health_check(
    fakes: list[FakeLlamaServer], parley: Server
) -> None:
    client = parley.client()
    homes = {}
    for i in range(KEYS):
        before = _counts(fakes)
        _ask(client, i)
        homes[i] = next(
            n for n, (a, b) in enumerate(zip(before, _counts(fakes), strict=True)) if b > a
        )
    assert set(homes.values()) == {0, 1}, homes
    down = fakes[1]
    down.stop()
    for fake in fakes:
        fake.reset()
    stream_sent = False
    for i in range(KEYS):  # each answered in full: a down home is failed over before any byte
        if homes[i] == 1 and not stream_sent:
            with client.messages.stream(
                model=MODEL,
                max_tokens=50,
                system=_system(i),
                messages=HI,  # type: ignore[arg-type]
            ) as stream:
                assert stream.get_final_message().content[0].text == ANSWER  # type: ignore[union-attr]
            stream_sent = True
        else:
            _ask(client, i)
    assert fakes[0].requests == KEYS  # each request reached the live backend once
    backend = _backends(parley)[1]
    assert backend["url"] == down.url and backend["state"] != "closed", backend
    assert backend["opened"] >= 1  # by failed requests or by its health check, first
    down.start()  # the same port: the health check sees it answer
    wait_for(lambda: _states(parley) == ["closed", "closed"], "the backend to be back")
    fakes[0].reset()
    for i in range(KEYS):
        _ask(client, i)
    assert down.requests == sum(1 for home in homes.values() if home == 1)
    assert fakes[0].requests == sum(1 for home in homes.values() if home == 0)


def test_health_answers_503_while_every_backend_is_down(
    fakes: list[FakeLlamaServer], parley: Server
) -> None:
    """No request needs to fail first: the health task checks the backends in
    use too, and parley's own /health tells a load balancer to go elsewhere."""
    assert httpx.get(parley.url + "/health").status_code == 200
    fakes[0].stop()
    wait_for(lambda: _states(parley)[0] != "closed", "the first backend's circuit to open")
    assert httpx.get(parley.url + "/health").status_code == 200  # the other one serves
    _ask(parley.client(), 1)
    fakes[1].stop()
    health = wait_for(
        lambda: (r := httpx.get(parley.url + "/health")).status_code == 503 and r,
        "/health to say the model cannot be served",
    )
    reason = health.json()["engines"][MODEL]
    assert fakes[0].url in reason and fakes[1].url in reason, reason
    fakes[1].start()
    wait_for(lambda: httpx.get(parley.url + "/health").status_code == 200, "/health back")
    _ask(parley.client(), 1)


def test_stats_show_each_backend(fakes: list[FakeLlamaServer], parley: Server) -> None:
    backends = _backends(parley)
    assert [b["url"] for b in backends] == [f.url for f in fakes]
    for backend in backends:
        assert backend["in_flight"] == 0 and backend["state"] == "closed"
        assert {"requests", "failures", "opened", "failures_in_a_row"} <= set(backend)


def test_start_up_needs_one_backend_the_other_joins_later(
    gguf: Path, server_factory: Callable[..., Server]
) -> None:
    up = FakeLlamaServer(gguf, n_ctx=4096).start()
    late = FakeLlamaServer(gguf, n_ctx=2048, port=free_port())  # not listening yet
    try:
        server = server_factory(*_args([up.url, late.url], gguf))
        assert _states(server) == ["closed", "open"]
        assert "backend not up at start" in server.log()
        _ask(server.client(), 1)  # served by the one up
        late.start()  # its context is smaller than the model's (4096): kept out
        wait_for(lambda: "kept out" in server.log(), "parley to probe the late backend")
        assert _states(server)[1] != "closed"
    finally:
        up.close()
        late.close()


def test_backends_differing_in_context_serve_the_smallest(
    gguf: Path, server_factory: Callable[..., Server]
) -> None:
    small, big = FakeLlamaServer(gguf, n_ctx=1024).start(), FakeLlamaServer(gguf).start()
    try:
        server = server_factory(*_args([big.url, small.url], gguf))
        assert server.client().models.retrieve(MODEL).max_input_tokens == 1024
        assert "backends differ in context" in server.log()
    finally:
        small.close()
        big.close()


def test_two_real_llama_servers_the_same_cached_prefix_goes_where_it_is_cached(
    gguf: Path, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a terse assistant for the city of Lyon. " * 12,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    flags = ("-c", "2048", "-np", "1")
    with (
        llama_server_process(gguf, tmp_path, *flags) as one,
        llama_server_process(gguf, tmp_path, *flags) as two,
    ):
        server = server_factory(*_args([one, two], gguf))
        client = server.client()
        usages = []
        for question in ["Say hello.", "Say goodbye."]:
            message = client.messages.create(
                model=MODEL,
                max_tokens=4,
                extra_body={"temperature": 0.0},
                system=system,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": question}],
            )
            usages.append(message.usage)
        assert usages[0].cache_read_input_tokens == 0
        assert (usages[0].cache_creation_input_tokens or 0) > 100
        assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens
        assert sorted(b["requests"] for b in _backends(server)) == [0, 2]

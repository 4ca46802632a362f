"""parley in front of a failing llama-server: each fault gives the right Anthropic error.

parley runs as a real subprocess (``--engine llamaserver``) in front of
``tests/fake_llama_server.py`` on a real socket, driven by the SDK (strict
response validation) and, for the SSE itself, raw httpx. Each fault is
tried non-streamed and streamed: the status and ``error.type`` (a streamed
request gets a fault before the upstream answered 200 as the same status,
since parley waits for that answer before it sends anything; one after
that, once ``message_start`` went out, as ``event: error``), parley serving
the next request as before, and
the fake's count of requests in flight back to 0 (nothing leaked upstream).

Expected mappings (``parley/engines/llamaserver/client.py``):

* 429 / 503 → 529 ``overloaded_error`` with the upstream's ``retry-after``;
* nothing for ``timeout`` s → 504 ``timeout_error``: the SDK has its own
  ``GatewayTimeoutError`` for it and the error object type
  ``timeout_error`` (``types/shared/gateway_timeout_error_object.py``),
  which says "took too long" better than a generic ``api_error``;
* 400 ``exceed_context_size_error`` → 400 ``invalid_request_error`` with the
  upstream's counts, worded as the API's "prompt is too long";
* 500, a dropped connection, malformed SSE, an error chunk, a stream cut
  short → 500 ``api_error`` naming the upstream.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Server, free_port, start_server, stop_server, wait_for
from tests.fake_llama_server import (
    ANSWER,
    Behaviour,
    ContextExceeded,
    Cut,
    Drop,
    Fail,
    FakeLlamaServer,
    Garble,
    Hang,
    Refuse,
)

MODEL = "fake-upstream"
HI = [{"role": "user", "content": "Say hello."}]
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
TIMEOUT = 1.0  # parley's engine option: seconds without a byte from the upstream


@pytest.fixture(scope="module")
def gguf() -> Path:
    from parley.engines.llamacpp import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="module")
def fake(gguf: Path) -> Iterator[FakeLlamaServer]:
    server = FakeLlamaServer(gguf).start()
    yield server
    server.close()


def _parley_args(fake: FakeLlamaServer, gguf: Path, *extra: str) -> list[str]:
    return [
        "--engine", "llamaserver",
        "--engine-opt", f"url={fake.url}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", f"model_name={MODEL}",
        "--engine-opt", f"timeout={TIMEOUT:g}",
        "--ping-interval", "0.5",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def parley(fake: FakeLlamaServer, gguf: Path, server_factory: Callable[..., Server]) -> Server:
    return server_factory(*_parley_args(fake, gguf))


@pytest.fixture(scope="module")
def client(parley: Server) -> anthropic.Anthropic:
    return parley.client()


@pytest.fixture(autouse=True)
def _fresh(fake: FakeLlamaServer, parley: Server) -> Iterator[None]:
    fake.reset()
    yield
    # Whatever parley gave up on, it closed: the upstream holds nothing.
    wait_for(lambda: fake.in_flight == 0, lambda: f"the fake's {fake.in_flight} requests to end")
    assert "Traceback" not in parley.log(), parley.log()[-3000:]


@dataclass(frozen=True)
class Fault:
    behaviour: Behaviour
    status: int
    error_type: str
    says: str  # in the message
    sdk_error: type[anthropic.APIStatusError]
    retry_after: str | None = None


FAULTS = {
    "500": Fault(Refuse(500, "boom"), 500, "api_error", "HTTP 500: boom",
                 anthropic.InternalServerError),
    "503": Fault(Refuse(503, "Loading model", "unavailable_error", {"retry-after": "7"}),
                 529, "overloaded_error", "busy (HTTP 503)", anthropic.OverloadedError, "7"),
    "429": Fault(Refuse(429, "slow down", "rate_limit_error", {"retry-after": "9"}),
                 529, "overloaded_error", "busy (HTTP 429)", anthropic.OverloadedError, "9"),
    "dies mid-stream": Fault(Drop(3), 500, "api_error", "closed the connection",
                             anthropic.InternalServerError),
    "dies right after its headers": Fault(Drop(0), 500, "api_error", "closed the connection",
                                          anthropic.InternalServerError),
    "stream cut short": Fault(Cut(3), 500, "api_error", "before the last chunk",
                              anthropic.InternalServerError),
    "slow to answer": Fault(Hang(0), 504, "timeout_error", f"sent nothing for {TIMEOUT:g} s",
                            anthropic.GatewayTimeoutError),
    "stalls mid-stream": Fault(Hang(3), 504, "timeout_error", f"sent nothing for {TIMEOUT:g} s",
                               anthropic.GatewayTimeoutError),
    "malformed SSE": Fault(Garble(2), 500, "api_error", "malformed event: 'data: {not json'",
                           anthropic.InternalServerError),
    "a chunk of the wrong shape": Fault(Garble(2, 'data: {"content": 7, "tokens": [1]}'), 500,
                                        "api_error", "malformed event",
                                        anthropic.InternalServerError),
    "error chunk": Fault(Fail(2), 500, "api_error", "failed to decode the batch",
                         anthropic.InternalServerError),
    "prompt too long": Fault(ContextExceeded(8), 400, "invalid_request_error",
                             "prompt is too long: ", anthropic.BadRequestError),
}  # fmt: skip


def _create(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    kwargs = {"model": MODEL, "max_tokens": 50, "messages": HI, **kwargs}
    return client.messages.create(**kwargs)  # type: ignore[no-any-return]


def _sse(server: Server, **body: Any) -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
    """A streamed request's status and its events (type, data), read to the end."""
    payload = {"model": MODEL, "max_tokens": 50, "messages": HI, "stream": True, **body}
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "POST", server.url + "/v1/messages", json=payload, headers=HEADERS, timeout=60
    ) as response:
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return response, events


def _check_message(fault: Fault, message: str, fake: FakeLlamaServer) -> None:
    assert fault.says in message, message
    if fault.error_type == "invalid_request_error":  # the upstream's own counts
        n = len(fake.bodies[-1]["prompt"])
        assert message.startswith(f"prompt is too long: {n} tokens > 7 maximum"), message
    else:
        assert fake.url in message, message


def _serves_again(client: anthropic.Anthropic) -> None:
    message = _create(client)
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn"


def test_the_fake_answers_as_llama_server_does(
    fake: FakeLlamaServer, client: anthropic.Anthropic
) -> None:
    """The baseline the faults depart from: the ids decode to the answer, its end
    of generation is end_turn, and ``n_predict`` cuts it (``stop_type`` limit)."""
    _serves_again(client)
    body = fake.bodies[-1]
    assert body["stream"] is True and body["return_tokens"] is True and body["prompt"]
    short = _create(client, max_tokens=3)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    assert short.content[0].type == "text"
    assert short.content[0].text == "".join(fake.piece(t) for t in fake.tokens(ANSWER)[:3])
    assert fake.bodies[-1]["n_predict"] == 3


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_answers_a_whole_message_request_with_its_error(
    name: str, fake: FakeLlamaServer, client: anthropic.Anthropic
) -> None:
    fault = FAULTS[name]
    fake.script(fault.behaviour)
    with pytest.raises(anthropic.APIStatusError) as caught:
        _create(client)
    error = caught.value
    assert type(error) is fault.sdk_error and error.status_code == fault.status
    assert isinstance(error.body, dict)
    assert error.body["type"] == "error" and error.body["request_id"]
    assert error.body["error"]["type"] == fault.error_type
    _check_message(fault, error.body["error"]["message"], fake)
    if fault.retry_after is not None:
        assert error.response.headers["retry-after"] == fault.retry_after
    assert fake.requests == 1  # none of these is sent twice
    _serves_again(client)


def _before_the_answer(behaviour: Behaviour) -> bool:
    """A fault that comes before the upstream's 200 (its status, or no headers at all)."""
    return isinstance(behaviour, (Refuse, ContextExceeded)) or behaviour == Hang(0)


@pytest.mark.parametrize("name", [n for n, f in FAULTS.items() if _before_the_answer(f.behaviour)])
def test_a_fault_before_the_upstream_answered_is_a_streamed_requests_status(
    name: str, fake: FakeLlamaServer, parley: Server, client: anthropic.Anthropic
) -> None:
    fault = FAULTS[name]
    fake.script(fault.behaviour)
    payload = {"model": MODEL, "max_tokens": 50, "messages": HI, "stream": True}
    response = httpx.post(parley.url + "/v1/messages", json=payload, headers=HEADERS, timeout=60)
    assert response.status_code == fault.status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == fault.error_type
    _check_message(fault, body["error"]["message"], fake)
    if fault.retry_after is not None:
        assert response.headers["retry-after"] == fault.retry_after
    assert fake.requests == 1
    _serves_again(client)


@pytest.mark.parametrize(
    "name", [n for n, f in FAULTS.items() if not _before_the_answer(f.behaviour)]
)
def test_a_fault_after_the_upstream_answered_ends_a_stream_with_an_error_event(
    name: str, fake: FakeLlamaServer, parley: Server, client: anthropic.Anthropic
) -> None:
    fault = FAULTS[name]
    fake.script(fault.behaviour)
    response, events = _sse(parley)
    assert response.status_code == 200  # message_start went out once the upstream answered
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "error", kinds
    assert "message_stop" not in kinds and "message_delta" not in kinds
    data = events[-1][1]
    assert data["type"] == "error" and data["error"]["type"] == fault.error_type
    _check_message(fault, data["error"]["message"], fake)
    if isinstance(fault.behaviour, (Drop, Hang, Garble, Fail, Cut)) and fault.behaviour.after > 1:
        assert "content_block_delta" in kinds  # text had reached the client: no retry
    assert fake.requests == 1
    _serves_again(client)


def test_the_sdk_stream_raises_the_streamed_error(
    fake: FakeLlamaServer, client: anthropic.Anthropic
) -> None:
    fake.script(Drop(3))
    stream = client.messages.stream(model=MODEL, max_tokens=50, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(anthropic.APIStatusError) as caught, stream as events:
        for _ in events:
            pass
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    _serves_again(client)


def test_a_busy_upstream_asking_for_a_short_wait_is_retried_before_the_first_chunk(
    fake: FakeLlamaServer, parley: Server, client: anthropic.Anthropic
) -> None:
    fake.script(Refuse(503, "busy", "unavailable_error", {"retry-after": "0"}))
    message = _create(client)
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert fake.requests == 2
    fake.script(Refuse(429, "busy", "rate_limit_error", {"retry-after": "0"}))
    _, events = _sse(parley)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert fake.requests == 4


def test_the_upstream_prompt_too_long_is_not_retried_and_names_the_counts(
    fake: FakeLlamaServer, client: anthropic.Anthropic
) -> None:
    fake.script(ContextExceeded(8))
    with pytest.raises(anthropic.BadRequestError) as caught:
        _create(client, messages=[{"role": "user", "content": "word " * 50}])
    n = len(fake.bodies[-1]["prompt"])
    assert n > 50
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["message"].startswith(f"prompt is too long: {n} tokens > 7 maximum")
    assert fake.requests == 1


def test_an_upstream_that_goes_down_then_comes_back(
    gguf: Path, server_factory: Callable[..., Server]
) -> None:
    own = FakeLlamaServer(gguf, port=free_port()).start()
    try:
        server = server_factory(*_parley_args(own, gguf))
        client = server.client()
        _serves_again(client)
        own.stop()  # nothing listens on its port now
        with pytest.raises(anthropic.OverloadedError) as caught:
            _create(client)
        assert own.url in caught.value.message and "cannot be reached" in caught.value.message
        assert caught.value.response.headers["retry-after"]
        response, _ = _sse(server)  # not reached: a status, before anything was sent
        assert response.status_code == 529
        assert server.process.poll() is None
        own.start()  # the same port again
        _serves_again(client)
        assert "Traceback" not in server.log()
        wait_for(lambda: own.in_flight == 0, "the fake's requests to end")
    finally:
        own.close()


def test_start_up_waits_for_an_upstream_that_is_not_up_yet(gguf: Path, tmp_path: Path) -> None:
    """Nothing listening, then llama-server loading (503), then ready: parley
    logs that it waits and serves once the upstream is up."""
    own = FakeLlamaServer(gguf, port=free_port())  # not listening yet
    server: Server | None = None
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            starting = pool.submit(start_server, _parley_args(own, gguf), tmp_path)

            def log() -> str:
                return "".join(p.read_text() for p in tmp_path.glob("parley-*.log"))

            wait_for(lambda: "waiting for the upstream" in log(), "parley to say it waits")
            own.loading = True
            own.start()
            wait_for(lambda: own.health_checks >= 2, "parley to poll the loading upstream")
            assert not starting.done()
            own.loading = False
            server = starting.result(timeout=120)
        assert "cannot be reached" in server.log() and "upstream up" in server.log()
        _serves_again(server.client())
    finally:
        if server is not None:
            stop_server(server)
        own.close()


def test_start_up_fails_clearly_when_the_upstream_never_comes(gguf: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [
        "--engine", "llamaserver",
        "--engine-opt", f"url={url}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", "startup_timeout=1",
    ]  # fmt: skip
    server = start_server(args, tmp_path, may_exit=True)
    try:
        assert server.process.wait(60) != 0
        log = server.log()
        assert f'cannot start error="llama-server at {url} was not ready after 1 s' in log, log
        assert "cannot be reached" in log and "startup_timeout" in log
    finally:
        stop_server(server)

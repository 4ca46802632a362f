"""parley in chat mode (``--engine openai``) in front of a real llama-server's
``/v1/chat/completions``, driven by the SDK over sockets.

llama-server renders the prompt with ``--jinja`` and a ChatML template with
tools (``tests/data/chatml_tools.jinja``: SmolLM2's own has none), parses the
model's calls, counts with ``/v1/chat/completions/input_tokens`` and reports
its prompt cache. The model is tiny: every generation is bounded by a small
``max_tokens``, and greedy (``temperature`` 0 through ``extra_body``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import LONG_MESSAGES, Server, embedded_gguf, llama_server_process, wait_for

MODEL = "smollm2-chat"
GREEDY = {"temperature": 0.0}
TEMPLATE = Path(__file__).parent / "data" / "chatml_tools.jinja"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: Any = [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}]
WEATHER: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("llama-server-chat")
    flags = ("-c", "4096", "-np", "2", "--jinja", "--chat-template-file", str(TEMPLATE))
    with llama_server_process(embedded_gguf(), folder, *flags) as url:
        yield url


@pytest.fixture(scope="module")
def upstream(llama_server: str, server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        "--engine", "openai",
        "--engine-opt", f"url={llama_server}",
        "--engine-opt", f"model_name={MODEL}",
        "--ping-interval", "0.5",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(upstream: Server) -> anthropic.Anthropic:
    return upstream.client()


def busy_slots(url: str) -> int:
    slots = httpx.get(url + "/slots", timeout=5).json()
    return sum(1 for slot in slots if slot.get("is_processing"))


def prompt_total(usage: Any) -> int:
    """The prompt's tokens however the cache split them (what count_tokens counts)."""
    return int(
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )


def test_the_model_is_listed_with_the_upstreams_context(client: anthropic.Anthropic) -> None:
    model = client.models.retrieve(MODEL)
    assert model.max_input_tokens == 4096 // 2  # llama-server splits -c over its slots


def test_create_counts_exactly_and_bounds_the_answer(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Say hello to the counting test."}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    message = client.messages.create(
        model=MODEL, max_tokens=12, extra_body=GREEDY, messages=messages
    )
    assert prompt_total(message.usage) == counted.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 12
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content[0].type == "text" and message.content[0].text


def test_stream_matches_the_whole_message(client: anthropic.Anthropic) -> None:
    hi: Any = [{"role": "user", "content": "Say hello."}]
    whole = client.messages.create(model=MODEL, max_tokens=10, extra_body=GREEDY, messages=hi)
    with client.messages.stream(model=MODEL, max_tokens=10, extra_body=GREEDY, messages=hi) as s:
        kinds = [event.type for event in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.text for b in final.content] == [b.text for b in whole.content]  # type: ignore[union-attr]
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_a_repeated_prompt_reports_the_upstreams_cache(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Tell me about the prompt cache, please."}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages).input_tokens
    client.messages.create(model=MODEL, max_tokens=4, extra_body=GREEDY, messages=messages)
    with client.messages.stream(
        model=MODEL, max_tokens=4, extra_body=GREEDY, messages=messages
    ) as stream:
        again = stream.get_final_message()
    assert again.usage.cache_read_input_tokens  # llama-server's cached_tokens
    assert again.usage.input_tokens < counted
    assert prompt_total(again.usage) == counted


def test_a_stop_sequence_is_matched_and_ends_the_upstream_request(
    client: anthropic.Anthropic, llama_server: str
) -> None:
    messages: Any = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
    message = client.messages.create(
        model=MODEL, max_tokens=200, extra_body=GREEDY, messages=messages, stop_sequences=["5"]
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    text = message.content[0].text if message.content else ""  # type: ignore[union-attr]
    assert "5" not in text
    wait_for(lambda: busy_slots(llama_server) == 0, "llama-server's slots to be idle")


def test_a_prefill_is_continued_and_counted(client: anthropic.Anthropic) -> None:
    messages: Any = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello! My name is"},
    ]
    message = client.messages.create(
        model=MODEL, max_tokens=8, extra_body=GREEDY, messages=messages
    )
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    assert prompt_total(message.usage) == counted.input_tokens
    assert message.content and message.content[0].type == "text"
    assert not message.content[0].text.startswith("Hello! My name is")  # continued, not repeated


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        {"type": "any", "disable_parallel_tool_use": True},
    ],
)
def test_a_forced_call_comes_first_and_follows_its_schema(
    client: anthropic.Anthropic, choice: Any
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=40, extra_body=GREEDY, tools=TOOLS, tool_choice=choice,
        messages=WEATHER,
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use"]
    call = message.content[0]
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, SCHEMA)
    counted = client.messages.count_tokens(
        model=MODEL, tools=TOOLS, tool_choice=choice, messages=WEATHER
    )
    assert prompt_total(message.usage) == counted.input_tokens
    if choice["type"] == "tool":
        return
    # The loop goes on: the call and its result go back as tool_calls and a tool message.
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "20 degrees"}
    messages: Any = [
        *WEATHER,
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {"role": "user", "content": [result]},
    ]
    then = client.messages.create(
        model=MODEL, max_tokens=4, extra_body=GREEDY, tools=TOOLS, messages=messages,
        tool_choice={"type": "none"},
    )  # fmt: skip
    assert then.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in then.content)


def test_auto_and_none_leave_the_model_free(client: anthropic.Anthropic) -> None:
    for choice in ({"type": "auto"}, {"type": "none"}):
        message = client.messages.create(
            model=MODEL, max_tokens=6, extra_body=GREEDY, tools=TOOLS, tool_choice=choice,  # type: ignore[arg-type]
            messages=WEATHER,
        )  # fmt: skip
        assert message.stop_reason in ("tool_use", "end_turn", "max_tokens")
        for block in message.content:
            if block.type == "tool_use":
                assert choice["type"] == "auto" and block.name == "get_weather"
                jsonschema.validate(block.input, SCHEMA)


def test_every_usage_said_what_count_tokens_said(upstream: Server) -> None:
    """llama-server's own usage.prompt_tokens matched parley's count on every answer
    so far (the usage parley reports is that count, split by the cache figures)."""
    stats = upstream.stats()[MODEL]
    assert stats["completed"] > 0 and stats["miscounted"] == 0


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
            # Read until llama-server shows the request decoding, then leave.
            if line.startswith("data:") and "text_delta" in line and busy_slots(llama_server):
                break
        else:
            raise AssertionError("the stream ended before llama-server showed it decoding")
    wait_for(lambda: busy_slots(llama_server) == 0, "llama-server to drop the request")
    upstream.wait_stats(MODEL, cancelled=1)


ANSWER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_structured_output_goes_as_response_format(client: anthropic.Anthropic) -> None:
    """llama-server constrains the answer by ``response_format``; parley checks it,
    and counts the instruction it adds to the system prompt."""
    messages: Any = [{"role": "user", "content": "Alice is 31. Give her as JSON."}]
    fmt: Any = {"format": {"type": "json_schema", "schema": ANSWER}}
    counted = client.messages.count_tokens(model=MODEL, messages=messages, output_config=fmt)
    plain = client.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens > plain.input_tokens
    message = client.messages.create(
        model=MODEL, max_tokens=300, messages=messages, output_config=fmt, extra_body=GREEDY
    )
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), ANSWER)
    assert (
        message.usage.input_tokens
        + (message.usage.cache_read_input_tokens or 0)
        + (message.usage.cache_creation_input_tokens or 0)
        == counted.input_tokens
    )


def test_the_chat_engine_loads_no_llama_cpp() -> None:
    """A chat-mode upstream (a hosted service, say) needs no llama.cpp: its
    engine imports neither the bindings nor the embedded engine."""
    code = (
        "import sys, parley.engines.openai_chat.engine\n"
        "loaded = [m for m in ('llama_cpp', 'parley.engines.llamacpp.engine') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

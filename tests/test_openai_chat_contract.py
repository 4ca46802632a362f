"""The chat engine's mapping per upstream kind, against fake upstreams.

The fakes (``tests/fake_upstream.py``) replay the documented wire formats
of vLLM, SGLang, llama-server, Ollama's OpenAI-compatible endpoint and a
generic OpenAI server (recorded from documentation and sources, not live).
parley runs as a subprocess (``--engine openai``) in front of each, driven
by the official SDK; the test reads what parley sent from the fake.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Server
from tests.fake_upstream import WEATHER, Fake

MODEL = "chat-upstream"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
TOOLS: Any = [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}]
THINK: Any = {"type": "enabled", "budget_tokens": 1024}


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Fake]]:
    served: dict[str, Fake] = {}
    with contextlib.ExitStack() as stack:
        for kind in ("vllm", "sglang", "llamaserver", "ollama", "openai"):
            served[kind] = stack.enter_context(Fake(kind).serve())
        yield served


@pytest.fixture(scope="module")
def parley(
    fakes: dict[str, Fake], server_factory: Callable[..., Server]
) -> dict[str, anthropic.Anthropic]:
    clients = {}
    for kind, fake in fakes.items():
        extra = ["--engine-opt", "images=true"] if kind == "vllm" else []
        server = server_factory(
            "--engine", "openai",
            "--engine-opt", f"url={fake.url}",
            "--engine-opt", f"model_name={MODEL}",
            *extra,
        )  # fmt: skip
        clients[kind] = server.client()
    return clients


def engine_stats(client: anthropic.Anthropic) -> dict[str, Any]:
    url = str(client.base_url).rstrip("/") + "/parley/stats"
    stats: dict[str, Any] = httpx.get(url, headers={"x-api-key": "test-key"}).json()[MODEL]
    return stats


def sent(fake: Fake) -> dict[str, Any]:
    return fake.bodies()[-1]


# --- detection, counting, cache --------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "context"),
    [("vllm", 8192), ("sglang", 32768), ("llamaserver", 4096), ("ollama", 4096), ("openai", 4096)],
)
def test_the_kind_is_detected_and_its_context_read(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake], kind: str, context: int
) -> None:
    model = parley[kind].models.retrieve(MODEL)
    assert model.max_input_tokens == context
    parley[kind].messages.create(model=MODEL, max_tokens=20, messages=user("hi"))
    assert sent(fakes[kind])["model"] == {
        "vllm": "Qwen/Qwen3-0.6B", "sglang": "Qwen/Qwen3-0.6B", "llamaserver": "qwen3.gguf",
        "ollama": "qwen3:0.6b", "openai": "gpt-test",
    }[kind]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("vllm", "/v1/chat/completions/render"),
        ("sglang", "/v1/tokenize"),
        ("llamaserver", "/v1/chat/completions/input_tokens"),
    ],
)
def test_count_tokens_is_the_upstreams_count_of_the_same_body(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake], kind: str, path: str
) -> None:
    client, fake = parley[kind], fakes[kind]
    messages = user("Say hello, counted")
    counted = client.messages.count_tokens(model=MODEL, messages=messages, tools=TOOLS)
    message = client.messages.create(model=MODEL, max_tokens=20, messages=messages, tools=TOOLS)
    usage = message.usage
    total = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens  # type: ignore[operator]
    assert counted.input_tokens == total
    assert engine_stats(client)["miscounted"] == 0  # usage.prompt_tokens == the count
    counting = fake.bodies(path)[-1]
    assert counting["messages"] == sent(fake)["messages"]
    assert counting["tools"] == sent(fake)["tools"]
    if kind == "sglang":  # only the fields its /v1/tokenize documents
        assert "parallel_tool_calls" not in counting and "tool_choice" in counting


def test_vllm_cache_figures_come_from_the_final_usage_chunk(
    parley: dict[str, anthropic.Anthropic],
) -> None:
    client = parley["vllm"]
    messages = user("Say hello, twice")
    counted = client.messages.count_tokens(model=MODEL, messages=messages).input_tokens
    with client.messages.stream(model=MODEL, max_tokens=20, messages=messages) as stream:
        first = stream.get_final_message()
    second = client.messages.create(model=MODEL, max_tokens=20, messages=messages)
    assert first.usage.cache_creation_input_tokens == counted // 2  # created_cache_tokens
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == counted - counted // 2
    assert second.usage.cache_read_input_tokens == counted // 2  # cached_tokens
    assert second.usage.input_tokens == counted - counted // 2


def test_ollama_counts_are_an_estimate_that_usage_repeats(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    client = parley["ollama"]
    counted = client.messages.count_tokens(model=MODEL, messages=user("Say hello")).input_tokens
    message = client.messages.create(model=MODEL, max_tokens=20, messages=user("Say hello"))
    assert counted > 0 and message.usage.input_tokens == counted
    assert message.usage.cache_read_input_tokens == 0  # Ollama reports none
    assert not fakes["ollama"].bodies("/v1/tokenize")


# --- stop sequences ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_a_stop_the_upstream_names_is_reported(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake], kind: str
) -> None:
    message = parley[kind].messages.create(
        model=MODEL, max_tokens=20, messages=user("count"), stop_sequences=["three"]
    )
    assert sent(fakes[kind])["stop"] == ["three"]
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "three"
    assert message.content[0].text == "one two"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["llamaserver", "ollama", "openai"])
def test_parley_matches_stops_the_upstream_would_not_name(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake], kind: str
) -> None:
    with parley[kind].messages.stream(
        model=MODEL, max_tokens=20, messages=user("count"), stop_sequences=["thr"]
    ) as stream:
        message = stream.get_final_message()
    assert "stop" not in sent(fakes[kind])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "thr"
    assert message.content[0].text == "one two "  # type: ignore[union-attr]


# --- tools -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamaserver", "ollama", "openai"])
def test_streamed_tool_calls_become_tool_use_blocks(
    parley: dict[str, anthropic.Anthropic], kind: str
) -> None:
    with parley[kind].messages.stream(
        model=MODEL, max_tokens=50, messages=user("tool please"), tools=TOOLS
    ) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert "content_block_start" in kinds
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == WEATHER
    assert call.id.startswith("toolu_")


def test_tool_choice_in_each_dialect(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    named: Any = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    two = [*TOOLS, {"name": "other", "description": "x", "input_schema": {"type": "object"}}]
    parley["vllm"].messages.create(
        model=MODEL, max_tokens=50, messages=user("tool"), tools=two, tool_choice=named
    )
    body = sent(fakes["vllm"])
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert all(t["function"]["strict"] is True for t in body["tools"])  # vLLM: schema-bound
    parley["llamaserver"].messages.create(
        model=MODEL, max_tokens=50, messages=user("tool"), tools=two, tool_choice=named
    )
    body = sent(fakes["llamaserver"])  # string tool_choice only: the tool alone + required
    assert body["tool_choice"] == "required"
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    parley["sglang"].messages.create(
        model=MODEL, max_tokens=50, messages=user("tool"), tools=two, tool_choice={"type": "any"}
    )
    assert sent(fakes["sglang"])["tool_choice"] == "required"
    assert "strict" not in sent(fakes["sglang"])["tools"][0]["function"]
    parley["openai"].messages.create(
        model=MODEL, max_tokens=50, messages=user("hi"), tools=two, tool_choice={"type": "none"}
    )
    assert sent(fakes["openai"])["tool_choice"] == "none"


def test_a_sampler_the_upstream_lacks_is_a_400(parley: dict[str, anthropic.Anthropic]) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["openai"].messages.create(
            model=MODEL, max_tokens=5, messages=user("hi"), extra_body={"top_k": 5}
        )
    assert "top_k" in caught.value.message


def test_ollama_refuses_a_forced_tool_by_name(parley: dict[str, anthropic.Anthropic]) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["ollama"].messages.create(
            model=MODEL, max_tokens=50, messages=user("tool"), tools=TOOLS,
            tool_choice={"type": "any"},
        )  # fmt: skip
    assert "ollama" in caught.value.message and "tool_choice" in caught.value.message


def test_one_call_when_parallel_calls_are_disabled(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    choice: Any = {"type": "auto", "disable_parallel_tool_use": True}
    message = parley["openai"].messages.create(
        model=MODEL, max_tokens=50, messages=user("two tools"), tools=TOOLS, tool_choice=choice
    )
    assert sent(fakes["openai"])["parallel_tool_calls"] is False
    calls = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and len(calls) == 1
    both = parley["openai"].messages.create(
        model=MODEL, max_tokens=50, messages=user("two tools"), tools=TOOLS
    )
    assert len([b for b in both.content if b.type == "tool_use"]) == 2


def test_input_that_breaks_the_schema_fails_loudly(parley: dict[str, anthropic.Anthropic]) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        parley["sglang"].messages.create(
            model=MODEL, max_tokens=50, messages=user("bad tool"), tools=TOOLS
        )
    assert "input_schema" in caught.value.message


def test_tool_history_is_sent_as_tool_calls_and_tool_messages(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    messages: Any = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": WEATHER},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "20 C"},
            {"type": "text", "text": "And now?"},
        ]},
    ]  # fmt: skip
    parley["vllm"].messages.create(model=MODEL, max_tokens=20, messages=messages, tools=TOOLS)
    sent_messages = sent(fakes["vllm"])["messages"]
    assert sent_messages[1]["tool_calls"][0]["id"] == "toolu_1"
    assert sent_messages[1]["content"] == "Checking."
    assert sent_messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "20 C"}
    assert sent_messages[3] == {"role": "user", "content": "And now?"}


# --- thinking, prefill, images -----------------------------------------------------


@pytest.mark.parametrize(("kind", "budget_field"), [("vllm", "thinking_token_budget"),
                                                    ("llamaserver", "thinking_budget_tokens")])  # fmt: skip
def test_reasoning_becomes_a_signed_thinking_block(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake], kind: str, budget_field: str
) -> None:
    client = parley[kind]
    message = client.messages.create(
        model=MODEL, max_tokens=2048, messages=user("think"), thinking=THINK
    )
    body = sent(fakes[kind])
    assert body[budget_field] == 1024
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature and text.type == "text" and text.text == "Sure."
    # Sent back in history, it reaches the upstream as its reasoning field.
    history: Any = [
        *user("think"),
        {
            "role": "assistant",
            "content": [thinking.model_dump(), {"type": "text", "text": "Sure."}],
        },
        *user("again"),
    ]
    client.messages.create(model=MODEL, max_tokens=2048, messages=history, thinking=THINK)
    field = "reasoning" if kind == "vllm" else "reasoning_content"
    assert sent(fakes[kind])["messages"][1][field] == "Let me think."


@pytest.mark.parametrize("kind", ["sglang", "ollama", "openai"])
def test_thinking_is_refused_where_no_budget_can_be_set(
    parley: dict[str, anthropic.Anthropic], kind: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley[kind].messages.create(
            model=MODEL, max_tokens=2048, messages=user("think"), thinking=THINK
        )
    assert kind in caught.value.message and "budget" in caught.value.message
    capabilities = parley[kind].models.retrieve(MODEL).capabilities
    assert capabilities is not None and not capabilities.thinking.supported


def test_unasked_reasoning_is_not_shown(parley: dict[str, anthropic.Anthropic]) -> None:
    message = parley["vllm"].messages.create(model=MODEL, max_tokens=50, messages=user("think"))
    assert [b.type for b in message.content] == ["text"]


def test_a_prefill_is_continued_where_the_upstream_can(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    messages: Any = [*user("hi"), {"role": "assistant", "content": "Well,"}]
    parley["sglang"].messages.create(model=MODEL, max_tokens=20, messages=messages)
    body = sent(fakes["sglang"])
    assert body["messages"][-1] == {"role": "assistant", "content": "Well,"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["openai"].messages.create(model=MODEL, max_tokens=20, messages=messages)
    assert "prefill" in caught.value.message


def test_images_go_as_data_uris_where_the_model_takes_them(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    data = base64.b64encode(b"\x89PNG fake").decode()
    messages: Any = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is this?"},
    ]}]  # fmt: skip
    parley["vllm"].messages.create(model=MODEL, max_tokens=20, messages=messages)
    content = sent(fakes["vllm"])["messages"][0]["content"]
    assert content[0] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{data}"},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["sglang"].messages.create(model=MODEL, max_tokens=20, messages=messages)
    assert "image" in caught.value.message


# --- limits and errors -------------------------------------------------------------


def test_the_answer_is_bounded_by_max_tokens(
    parley: dict[str, anthropic.Anthropic], fakes: dict[str, Fake]
) -> None:
    message = parley["vllm"].messages.create(model=MODEL, max_tokens=7, messages=user("long"))
    assert sent(fakes["vllm"])["max_tokens"] == 7
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 7


def test_a_context_overflow_the_upstream_reports_is_a_400_with_the_count(
    parley: dict[str, anthropic.Anthropic],
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["llamaserver"].messages.create(model=MODEL, max_tokens=20, messages=user("too long"))
    assert "prompt is too long: 5000 tokens" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught:
        parley["openai"].messages.create(model=MODEL, max_tokens=20, messages=user("too long"))
    assert "prompt is too long" in caught.value.message
    assert "maximum context length" in caught.value.message


@pytest.mark.parametrize(("status", "error"), [(429, anthropic.APIStatusError),
                                               (503, anthropic.APIStatusError),
                                               (500, anthropic.InternalServerError)])  # fmt: skip
def test_upstream_failures_cross_the_boundary(
    parley: dict[str, anthropic.Anthropic], status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        parley["openai"].messages.create(
            model=MODEL, max_tokens=20, messages=user(f"status {status}")
        )
    failure: Any = caught.value
    if status in (429, 503):
        assert failure.status_code == 529 and failure.response.headers["retry-after"] == "10"
        # A stream gets the status too: nothing went out before the upstream answered.
        with pytest.raises(anthropic.APIStatusError) as streamed:
            parley["openai"].messages.create(
                model=MODEL, max_tokens=20, messages=user(f"status {status}"), stream=True
            )
        assert streamed.value.status_code == 529
    else:
        assert failure.status_code == 500 and "fake failure 500" in failure.message


def test_an_upstream_that_went_away_is_a_529(server_factory: Callable[..., Server]) -> None:
    with Fake("openai").serve() as fake:
        gone = server_factory(
            "--engine", "openai", "--engine-opt", f"url={fake.url}",
            "--engine-opt", f"model_name={MODEL}",
        )  # fmt: skip
    response = httpx.post(
        gone.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": user("hi")},
        headers={"x-api-key": "test-key"},
        timeout=30,
    )
    assert response.status_code == 529, response.text
    assert "cannot be reached" in response.json()["error"]["message"]


def test_an_error_chunk_mid_stream_ends_the_stream_with_an_error_event(
    parley: dict[str, anthropic.Anthropic],
) -> None:
    with (
        parley["vllm"].messages.stream(
            model=MODEL, max_tokens=20, messages=user("fail midway")
        ) as stream,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        for _ in stream:
            pass
    assert "engine dead" in str(caught.value)


def test_several_upstreams_side_by_side_from_one_config(
    fakes: dict[str, Fake], server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        "".join(
            f'[[models]]\nengine = "openai"\nurl = "{fakes[kind].url}"\nmodel_name = "{kind}-model"\n\n'
            for kind in ("vllm", "ollama")
        )
    )
    client = server_factory("--config", str(config)).client()
    assert {m.id for m in client.models.list()} >= {"vllm-model", "ollama-model"}
    for kind in ("vllm", "ollama"):
        message = client.messages.create(model=f"{kind}-model", max_tokens=20, messages=user("hi"))
        assert message.content[0].text == "Hello there."  # type: ignore[union-attr]
        assert sent(fakes[kind])["messages"] == [{"role": "user", "content": "hi"}]

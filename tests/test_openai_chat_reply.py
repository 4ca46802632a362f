"""The chat engine's pure parts, without HTTP: request bodies and the reply reader."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.conversation import (
    Conversation,
    ImagePart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
    Turn,
)
from parley.engines.base import Finished, SamplingParams, TextChunk, ToolCallStart, ToolInputChunk
from parley.engines.openai_chat.dialects import DIALECTS, count_of, detect
from parley.engines.openai_chat.reply import Reply
from parley.engines.openai_chat.request import chat_body, sampling
from parley.errors import EngineError, UnsupportedFeatureError

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = ToolSpec("get_weather", "Weather", SCHEMA)


def conversation(**kwargs: Any) -> Conversation:
    turns = kwargs.pop("turns", (Turn("user", (TextPart("hi"),)),))
    return Conversation(system=kwargs.pop("system", None), turns=turns, **kwargs)


def chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def read(reply: Reply, chunks: list[dict[str, Any]]) -> list[Any]:
    events: list[Any] = []
    for item in chunks:
        events += reply.feed(item)
        if reply.done is not None:
            break
    return events + reply.end()


def test_a_stop_sequence_split_across_deltas_is_held_back_and_matched() -> None:
    params = SamplingParams(max_tokens=50, stop_sequences=("END",))
    reply = Reply(conversation(), params, DIALECTS["openai"], url="u")
    events = read(reply, [chunk(content="one E"), chunk(content="N"), chunk(content="D two")])
    assert events == [TextChunk("one "), Finished("stop_sequence", 3, "END")]


def test_a_call_whose_name_comes_late_starts_then_streams_what_was_held() -> None:
    reply = Reply(conversation(tools=(TOOL,)), SamplingParams(50), DIALECTS["vllm"], url="u")
    events = read(
        reply,
        [
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city"'}}]),
            chunk(tool_calls=[{"index": 0, "function": {"name": "get_weather"}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": ': "Paris"}'}}]),
            chunk("tool_calls"),
        ],
    )
    start, first, second, finished = events
    assert isinstance(start, ToolCallStart) and start.name == "get_weather"
    assert (first, second) == (ToolInputChunk('{"city"'), ToolInputChunk(': "Paris"}'))
    assert finished == Finished("tool_use", 3)


def test_arguments_sent_as_an_object_are_serialised() -> None:
    reply = Reply(conversation(tools=(TOOL,)), SamplingParams(50), DIALECTS["ollama"], url="u")
    call = {"index": 0, "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    events = read(reply, [chunk(tool_calls=[call]), chunk("stop")])
    assert events[1] == ToolInputChunk('{"city": "Rome"}')
    assert events[-1].stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [('{"city": 3}', "input_schema"), ("not json", "not JSON"), ("[1]", "not an object")],
)
def test_bad_inputs_fail_the_request(arguments: str, says: str) -> None:
    reply = Reply(conversation(tools=(TOOL,)), SamplingParams(50), DIALECTS["vllm"], url="u")
    call = {"index": 0, "function": {"name": "get_weather", "arguments": arguments}}
    with pytest.raises(EngineError, match=says):
        read(reply, [chunk(tool_calls=[call]), chunk("tool_calls")])


def test_a_call_of_a_tool_not_offered_fails() -> None:
    reply = Reply(conversation(tools=(TOOL,)), SamplingParams(50), DIALECTS["vllm"], url="u")
    call = {"index": 0, "function": {"name": "rm_rf", "arguments": "{}"}}
    with pytest.raises(EngineError, match="not an offered tool"):
        read(reply, [chunk(tool_calls=[call]), chunk("tool_calls")])


def test_length_is_max_tokens_or_the_context_window() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    for max_tokens, expected in ((4, "max_tokens"), (100, "model_context_window_exceeded")):
        reply = Reply(conversation(), SamplingParams(max_tokens), DIALECTS["vllm"], url="u")
        events = read(reply, [chunk(content="a b c d"), chunk("length"), usage])
        assert events[-1].stop_reason == expected and events[-1].output_tokens == 4


def test_a_forced_call_that_never_comes_fails_loudly() -> None:
    conv = conversation(tools=(TOOL,), tool_choice="any")
    reply = Reply(conv, SamplingParams(50), DIALECTS["vllm"], url="u")
    with pytest.raises(EngineError, match="tool_choice requires"):
        read(reply, [chunk(content="no call"), chunk("stop")])


def test_other_finish_reasons_are_an_engine_error() -> None:
    reply = Reply(conversation(), SamplingParams(50), DIALECTS["openai"], url="u")
    with pytest.raises(EngineError, match="content_filter"):
        read(reply, [chunk(content="x"), chunk("content_filter")])


def test_the_body_carries_history_in_openai_shapes() -> None:
    turns = (
        Turn("user", (TextPart("look"), ImagePart("image/png", "AAAA"))),
        Turn("assistant", (ThinkingPart("hm"), ToolCallPart("toolu_1", "get_weather", {"city": "X"}))),
        Turn("user", (ToolResultPart("toolu_1", "boom", is_error=True), TextPart("so?"))),
    )  # fmt: skip
    body = chat_body(conversation(system="be brief", turns=turns, tools=(TOOL,)), DIALECTS["vllm"],
                     model="m")  # fmt: skip
    system, user, assistant, tool, last = body["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"][1] == {"type": "image_url",
                                  "image_url": {"url": "data:image/png;base64,AAAA"}}  # fmt: skip
    assert assistant["content"] is None and assistant["reasoning"] == "hm"
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather",
                                                      "arguments": '{"city": "X"}'}  # fmt: skip
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"}
    assert last == {"role": "user", "content": "so?"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_refusals_name_the_upstream() -> None:
    with pytest.raises(UnsupportedFeatureError, match=r"ollama.*tool_choice"):
        chat_body(conversation(tools=(TOOL,), tool_choice="tool", tool_name="get_weather"),
                  DIALECTS["ollama"], model="m")  # fmt: skip
    with pytest.raises(UnsupportedFeatureError, match=r"sglang.*budget"):
        chat_body(conversation(thinking_budget=1024), DIALECTS["sglang"], model="m")
    with pytest.raises(UnsupportedFeatureError, match=r"openai.*prefill"):
        chat_body(conversation(prefill="Well"), DIALECTS["openai"], model="m")
    with pytest.raises(UnsupportedFeatureError, match="top_k"):
        sampling(SamplingParams(5, top_k=3), DIALECTS["openai"], max_tokens=5)


def test_a_forced_call_is_prefilled_where_a_prefix_is_given() -> None:
    conv = conversation(tools=(TOOL,), tool_choice="any")
    body = chat_body(conv, DIALECTS["llamaserver"], model="m", call_prefix="<tool_call>\n")
    assert body["messages"][-1] == {"role": "assistant", "content": "<tool_call>\n"}
    assert body["continue_final_message"] is True and body["tool_choice"] == "required"
    free = chat_body(conversation(tools=(TOOL,)), DIALECTS["llamaserver"], model="m",
                     call_prefix="<tool_call>\n")  # fmt: skip
    assert free["messages"][-1]["role"] == "user"


def test_kinds_are_detected_and_counts_read() -> None:
    assert detect({"data": [{"owned_by": "vllm"}]}, None, False) == "vllm"
    assert detect({"data": [{"owned_by": "sglang"}]}, None, False) == "sglang"
    assert detect(None, {"default_generation_settings": {}}, False) == "llamaserver"
    assert detect({"data": [{"owned_by": "library"}]}, None, True) == "ollama"
    assert detect({"data": [{"owned_by": "system"}]}, None, False) == "openai"
    assert count_of(DIALECTS["vllm"], {"token_ids": [1, 2, 3]}) == 3
    assert count_of(DIALECTS["vllm"], [{"token_ids": [1, 2]}]) == 2
    assert count_of(DIALECTS["sglang"], {"tokens": [1], "count": 1}) == 1
    assert count_of(DIALECTS["llamaserver"], {"input_tokens": 7}) == 7
    with pytest.raises(ValueError):
        count_of(DIALECTS["llamaserver"], {"tokens": 7})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({}, "'url' must be"),
        ({"url": "http://x", "kind": "tgi"}, "'kind' is one of"),
        ({"url": "http://x", "modle": "m"}, "did you mean 'model'"),
        ({"url": "http://x", "images": "maybe"}, "expected true or false"),
        ({"url": "http://x", "chat_template": "t.jinja"}, "its own chat template"),
    ],
)
def test_options_are_checked_at_start(options: dict[str, Any], says: str) -> None:
    from parley.config import ConfigError, load_settings
    from parley.engines.openai_chat import from_settings

    settings = load_settings({"engine": "openai", "engine_opts": options}, environ={})
    with pytest.raises(ConfigError, match=says):
        from_settings(settings)


def test_options_reach_the_engine() -> None:
    from parley.config import load_settings
    from parley.engines.openai_chat import from_settings

    opts = {"url": "http://x/", "kind": "vllm", "context_length": "9000", "images": "yes"}
    engine = from_settings(load_settings({"engine": "openai", "engine_opts": opts}, environ={}))
    assert engine.url == "http://x" and engine.dialect.kind == "vllm"
    assert engine.card.context_length == 9000
    asyncio.run(engine.close())

"""Tool use on the real embedded model: every tool_choice, schema-valid inputs, streaming.

The grammar guarantees the shape of a call (a known name, JSON that matches
the tool's schema); which tool the model picks, and what it writes inside
the schema, is the model's business.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL, Server

pytestmark = pytest.mark.model

GREEDY = {"temperature": 0.0}

WEATHER = {
    "name": "get_weather",
    "description": "Get the weather forecast for a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city", "unit"],
    },
}
BOOKING = {
    "name": "book_flight",
    "description": "Book a flight.",
    "input_schema": {
        "type": "object",
        "properties": {
            "from": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "to": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "passengers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 30},
                        "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        "seat": {"type": "string", "enum": ["window", "aisle"]},
                    },
                    "required": ["name"],
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "price_limit": {"type": "number", "minimum": 0, "maximum": 5000},
            "refundable": {"type": "boolean"},
            "notes": {"type": ["string", "null"], "maxLength": 40},
        },
        "required": ["from", "to", "passengers"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Current time in a timezone.",
    "input_schema": {
        "type": "object",
        "properties": {"zone": {"type": "string", "maxLength": 30}},
        "required": ["zone"],
    },
}
TOOLS = [WEATHER, BOOKING, TIME]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK = [
    {
        "role": "user",
        "content": "Book me a flight from Paris to Rome for two people, and tell me the weather in Rome.",
    }
]


def calls(message: anthropic.types.Message) -> list[Any]:
    return [b for b in message.content if b.type == "tool_use"]


def check_calls(message: anthropic.types.Message, schemas: dict[str, Any]) -> None:
    for call in calls(message):
        assert call.id.startswith("toolu_")
        assert call.name in schemas
        jsonschema.validate(call.input, schemas[call.name])


def create(client: anthropic.Anthropic, **kw: Any) -> anthropic.types.Message:
    options: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 400,
        "tools": TOOLS,
        "messages": ASK,
        "extra_body": GREEDY,
    }
    options.update(kw)
    return client.messages.create(**options)


APPOINTMENT = {
    "name": "book_appointment",
    "description": "Book an appointment.",
    "input_schema": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "day": {"type": "string", "format": "date"},
            "starts": {"type": "string", "format": "date-time", "maxLength": 25},
            "at": {"type": "string", "format": "time"},
            "email": {"type": "string", "format": "email"},
            "duration": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 8},
            "fee": {"type": "integer", "multipleOf": 100, "minimum": 100, "maximum": 10000},
            "seats": {"type": "integer", "exclusiveMinimum": 0, "maximum": 4},
        },
        "required": ["id", "day", "starts", "at", "email", "duration", "fee", "seats"],
    },
}


APPOINTMENT_ASK = (
    "Book appointment 123e4567-e89b-12d3-a456-426614174000 for jane@example.com on "
    "2025-03-04, starting 2025-03-04T10:30:00Z (at 10:30:00Z), 1.5 hours, fee 300, 2 seats."
)


def test_formats_and_exclusive_bounds_hold_in_a_forced_call(embedded_server: Server) -> None:
    """The embedded grammar: formats (checked by jsonschema where it can, by
    the documented forms where its checker is missing), strict bounds, multiples."""
    client = embedded_server.client(timeout=300.0)  # 160 constrained tokens on a shared CPU
    message = client.messages.create(
        model=MODEL,
        max_tokens=300,
        tools=[APPOINTMENT],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "book_appointment", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": APPOINTMENT_ASK}],
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use", message
    (call,) = calls(message)
    value = call.input
    # (draft 4's boolean exclusive bounds, which the grammar reads too, are checked
    # in test_grammar_numeric: a schema mixing both drafts is no valid schema, a 400)
    validator = jsonschema.Draft202012Validator
    validator(APPOINTMENT["input_schema"], format_checker=validator.FORMAT_CHECKER).validate(value)
    assert 0 < value["duration"] < 8 and 0 < value["seats"] <= 4 and value["fee"] % 100 == 0
    date.fromisoformat(value["day"])
    stamp = datetime.fromisoformat(value["starts"])
    assert stamp.tzinfo is not None and len(value["starts"]) <= 25
    assert re.fullmatch(r"\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value["at"])
    assert re.fullmatch(r"[^@]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", value["email"])
    uuid.UUID(value["id"])


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t["name"])
def test_forced_tool_yields_schema_valid_input(
    model_client: anthropic.Anthropic, tool: dict[str, Any]
) -> None:
    message = create(model_client, tool_choice={"type": "tool", "name": tool["name"]})
    made = calls(message)
    assert made and all(c.name == tool["name"] for c in made)
    assert not [b for b in message.content if b.type == "text"]  # forced: no text first
    if message.stop_reason == "max_tokens":
        # Parallel calls are allowed, so nothing bounds their number: the model
        # called again and again (seen once through llama-server). The last call
        # was cut off by the budget; the ones before it are whole.
        made = made[:-1]
    else:
        assert message.stop_reason == "tool_use"
    for call in made:
        assert call.id.startswith("toolu_")
        jsonschema.validate(call.input, SCHEMAS[call.name])


def test_any_calls_some_tool(model_client: anthropic.Anthropic) -> None:
    message = create(model_client, tool_choice={"type": "any"})
    made = calls(message)
    assert made and not [b for b in message.content if b.type == "text"]
    if message.stop_reason == "max_tokens":  # the model chose to call again and again
        made = made[:-1]  # the last call was cut off by the budget
    else:
        assert message.stop_reason == "tool_use"
    for call in made:
        assert call.name in SCHEMAS
        jsonschema.validate(call.input, SCHEMAS[call.name])


def test_disable_parallel_tool_use_gives_exactly_one_call(
    model_client: anthropic.Anthropic,
) -> None:
    for choice in (
        {"type": "any", "disable_parallel_tool_use": True},
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ):
        message = create(model_client, tool_choice=choice)
        assert message.stop_reason == "tool_use"
        assert len(calls(message)) == 1
        check_calls(message, SCHEMAS)


def test_none_never_calls(model_client: anthropic.Anthropic) -> None:
    message = create(model_client, tool_choice={"type": "none"}, max_tokens=60)
    assert not calls(message)
    assert message.stop_reason in {"end_turn", "max_tokens"}


def test_auto_answers_in_text_or_valid_calls(model_client: anthropic.Anthropic) -> None:
    message = create(model_client, tool_choice={"type": "auto"}, max_tokens=300)
    made = calls(message)
    if message.stop_reason == "max_tokens":  # text, or calls again and again (unbounded)
        made = made[:-1]  # the last block was cut off by the budget
    elif made:
        assert message.stop_reason == "tool_use"
    for call in made:
        assert call.name in SCHEMAS
        jsonschema.validate(call.input, SCHEMAS[call.name])


def test_tool_loop_with_results(model_client: anthropic.Anthropic) -> None:
    first = create(
        model_client,
        tools=[WEATHER],
        # One call: parallel ones are unbounded in number (a model may call until max_tokens).
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "What is the weather in Rome?"}],
    )
    call = calls(first)[0]
    history: list[Any] = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": b.id, "content": "Sunny, 24 degrees."}
                for b in calls(first)
            ],
        },
    ]
    answer = create(
        model_client, tools=[WEATHER], tool_choice={"type": "auto"}, max_tokens=60, messages=history
    )
    assert answer.stop_reason in {"end_turn", "max_tokens", "tool_use"}
    made = calls(answer)
    if answer.stop_reason == "max_tokens":
        made = made[:-1]  # a call cut off by the budget, if the answer was one
    for made_call in made:
        jsonschema.validate(made_call.input, SCHEMAS[made_call.name])
    counted = model_client.messages.count_tokens(
        model=MODEL, tools=[WEATHER], tool_choice={"type": "auto"}, messages=history
    )  # type: ignore[arg-type]
    assert counted.input_tokens == answer.usage.input_tokens
    assert call.input["city"]


def test_streamed_tool_input_arrives_in_deltas(
    model_client: anthropic.Anthropic, model_server: Server
) -> None:
    plain = create(
        model_client,
        tool_choice={"type": "tool", "name": "book_flight", "disable_parallel_tool_use": True},
    )
    with model_client.messages.stream(
        model=MODEL,
        max_tokens=400,
        tools=TOOLS,
        messages=ASK,
        extra_body=GREEDY,  # type: ignore[arg-type]
        tool_choice={"type": "tool", "name": "book_flight", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [
        e for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"
    ]
    assert starts and starts[0].content_block.input == {}
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 3
    assert json.loads("".join(pieces)) == final.content[0].input  # type: ignore[union-attr]
    check_calls(final, SCHEMAS)
    if not model_server.reproducible:
        return
    assert (
        final.model_dump(exclude={"id"}, exclude_none=True)["content"][0]["input"]
        == plain.content[0].input
    )  # type: ignore[union-attr]
    assert final.stop_reason == plain.stop_reason == "tool_use"


def test_anthropic_defined_tools_get_their_documented_schema(
    model_client: anthropic.Anthropic,
) -> None:
    message = model_client.messages.create(
        model=MODEL,
        max_tokens=200,
        extra_body=GREEDY,
        tools=[
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        ],
        tool_choice={
            "type": "tool",
            "name": "str_replace_based_edit_tool",
            "disable_parallel_tool_use": True,
        },
        messages=[{"role": "user", "content": "Create the file /tmp/hello.txt containing hello."}],
    )
    (call,) = calls(message)
    assert call.input["command"] in {"view", "create", "str_replace", "insert"}
    assert isinstance(call.input["path"], str)


@pytest.mark.parametrize(
    "choice",
    [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_time"}],
)
def test_count_tokens_with_tools_equals_usage(
    model_client: anthropic.Anthropic, choice: dict[str, Any]
) -> None:
    counted = model_client.messages.count_tokens(
        model=MODEL, tools=TOOLS, tool_choice=choice, messages=ASK
    )  # type: ignore[arg-type]
    message = create(model_client, tool_choice=choice, max_tokens=1)
    assert counted.input_tokens == message.usage.input_tokens
    without = model_client.messages.count_tokens(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    assert counted.input_tokens > without.input_tokens


# --- random schemas ------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True)
leaves = st.one_of(
    st.just({"type": "string", "maxLength": 12}),
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=4, unique=True).map(
        lambda v: {"enum": v}
    ),
    st.just({"type": "string", "pattern": "^[0-9]{2}-[A-Z]{2}$"}),
    st.tuples(st.integers(-50, 50), st.integers(0, 60)).map(
        lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}
    ),
    st.just({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
    st.just({"type": "number", "minimum": -1.5, "maximum": 2.25}),
)


def objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def build(props: dict[str, dict[str, Any]], data: st.DataObject) -> dict[str, Any]:
        required = data.draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
        return {"type": "object", "properties": props, "required": required}

    return st.builds(build, st.dictionaries(names, children, min_size=1, max_size=3), st.data())


schemas = st.recursive(
    leaves,
    lambda inner: st.one_of(
        objects(inner),
        st.builds(
            lambda item, hi: {"type": "array", "items": item, "maxItems": hi},
            inner,
            st.integers(1, 3),
        ),
    ),
    max_leaves=6,
).filter(lambda s: s.get("type") == "object") | objects(leaves)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=schemas)
def test_random_schemas_always_validate(model_server: Server, schema: dict[str, Any]) -> None:
    client = model_server.client()
    tool = {"name": "do_it", "description": "Do the thing.", "input_schema": schema}
    message = client.messages.create(
        model=MODEL,
        max_tokens=600,
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "do_it", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Do the thing with sensible values."}],
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use", message
    (call,) = calls(message)
    jsonschema.validate(call.input, schema)


# --- a model whose chat template renders tools itself (Hermes style) -------------

HERMES = Path(__file__).parent / "data" / "hermes.jinja"


@pytest.fixture(scope="module")
def hermes_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--chat-template", str(HERMES))


def test_native_template_tools_round_trip(hermes_server: Server) -> None:
    client = hermes_server.client()
    first = create(
        client,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    assert first.stop_reason == "tool_use"
    check_calls(first, SCHEMAS)
    history: list[Any] = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": b.id, "content": "Sunny.", "is_error": False}
                for b in calls(first)
            ],
        },
    ]
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER, TIME],
        messages=history,
        extra_body=GREEDY,  # type: ignore[arg-type]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and len(calls(final)) == 1
    check_calls(final, SCHEMAS)
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json.loads("".join(pieces)) == calls(final)[0].input
    counted = client.messages.count_tokens(
        model=MODEL,
        tools=[WEATHER, TIME],
        messages=history,  # type: ignore[arg-type]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert counted.input_tokens == final.usage.input_tokens


def test_native_template_renders_tools_and_history() -> None:
    from parley.conversation import (
        Conversation,
        TextPart,
        ToolCallPart,
        ToolResultPart,
        ToolSpec,
        Turn,
    )
    from parley.engines.llamacpp.chat_template import ChatTemplate

    template = ChatTemplate(HERMES.read_text(), bos_token="", eos_token="")
    assert template.native_tools
    conv = Conversation(
        system="Be brief.",
        turns=(
            Turn("user", (TextPart("Weather in Rome?"),)),
            Turn("assistant", (ToolCallPart("toolu_1", "get_weather", {"city": "Rome"}),)),
            Turn("user", (ToolResultPart("toolu_1", "Sunny."),)),
        ),
        tools=(ToolSpec("get_weather", "Weather.", {"type": "object"}),),
    )
    text = template.render(conv)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert "Be brief." in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' in text
    )
    assert "<tool_response>\nSunny.\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")

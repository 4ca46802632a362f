"""Structured outputs (``output_config.format``) and strict tools, on the real model.

The answer text is decoded under a grammar built from the schema, so when the
model ends its answer, the text parses and validates. The schemas below bound
every string and array, so the grammar bounds the answer's length and every
answer ends well within ``max_tokens`` (a test's duration never depends on
what the model chooses to write). Runs against every engine kind that decodes
under parley's grammar (``model_server``: embedded and llama-server); the
schema shapes, random schemas and repeated samples, where the engine adds
nothing but the grammar's transport, run on the embedded model alone.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from tests.conftest import MODEL, Server
from tests.test_tools import schemas

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": PERSON,
    "nested": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 16},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 8},
                "minItems": 1,
                "maxItems": 3,
            },
            "owner": {"$ref": "#/$defs/owner"},
            "score": {"type": ["number", "null"], "minimum": 0, "maximum": 10},
        },
        "required": ["title", "tags", "owner", "score"],
        "additionalProperties": False,
        "$defs": {
            "owner": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}},
                "required": ["id"],
                "additionalProperties": False,
            }
        },
    },
    "union": {
        "anyOf": [
            {
                "type": "object",
                "properties": {"ok": {"const": True}, "value": {"type": "integer"}},
                "required": ["ok", "value"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "ok": {"const": False},
                    "error": {"type": "string", "maxLength": 10},
                },
                "required": ["ok", "error"],
                "additionalProperties": False,
            },
        ]
    },
    "dated": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "note": {"type": "string", "format": "text", "maxLength": 10},
        },
        "required": ["day", "code", "note"],
        "additionalProperties": False,
    },
    "list": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4},
}

ASK = "Describe the user Alice, 31 years old, an admin, as JSON."


def _create(
    client: anthropic.Anthropic, schema: dict[str, Any], max_tokens: int = 400, **extra: Any
) -> Any:
    return client.messages.create(
        model=MODEL,
        max_tokens=max_tokens,
        messages=[{"role": "user", "content": ASK}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        **extra,
    )


def _valid(text: str, schema: dict[str, Any]) -> Any:
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_answer_validates(embedded_server: Server, name: str) -> None:
    schema = SCHEMAS[name]
    message = _create(embedded_server.client(), schema)
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    _valid(message.content[0].text, schema)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=schemas)
def test_random_schemas_always_validate(embedded_server: Server, schema: dict[str, Any]) -> None:
    """The tool tests' random schemas (bounded strings and arrays) as answer formats."""
    message = _create(
        embedded_server.client(), schema, max_tokens=600, extra_body={"temperature": 0}
    )
    assert message.stop_reason == "end_turn", message
    _valid(message.content[0].text, schema)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_answer_validates_sampled(embedded_server: Server, temperature: float) -> None:
    client = embedded_server.client()
    for _ in range(3):
        message = _create(client, PERSON, extra_body={"temperature": temperature})
        assert message.stop_reason == "end_turn"
        _valid(message.content[0].text, PERSON)


def test_stream_gives_the_same_text(model_client: anthropic.Anthropic) -> None:
    with model_client.messages.stream(
        model=MODEL,
        max_tokens=400,
        messages=[{"role": "user", "content": ASK}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMAS["nested"]}},
    ) as stream:
        deltas = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert deltas == final.content[0].text
    _valid(deltas, SCHEMAS["nested"])


class Person(BaseModel):
    # Only what the SDK's transform_schema keeps: it moves length and numeric
    # bounds into the description (the API does not take them), so the answer
    # need not meet them and pydantic would refuse it.
    name: Literal["Alice", "Bob", "Carol"]
    age: int
    admin: bool


def test_sdk_parse_helper(model_client: anthropic.Anthropic) -> None:
    """``messages.parse`` sends the SDK's transformed schema and parses the answer."""
    parsed = model_client.messages.parse(
        model=MODEL,
        max_tokens=400,
        messages=[{"role": "user", "content": ASK}],
        output_format=Person,
    )
    assert parsed.stop_reason == "end_turn"
    assert isinstance(parsed.parsed_output, Person)


def test_beta_output_format(model_server: Server) -> None:
    """The beta's deprecated top-level ``output_format`` is the same constraint."""
    client = model_server.client()
    message = client.beta.messages.create(
        model=MODEL,
        max_tokens=400,
        messages=[{"role": "user", "content": ASK}],
        betas=["structured-outputs-2025-11-13"],
        extra_body={"output_format": {"type": "json_schema", "schema": PERSON}},
    )
    assert message.stop_reason == "end_turn"
    _valid(message.content[0].text, PERSON)


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled", "budget_tokens": 1024},
        # Half of max_tokens (150): the model is cut there and parley closes the
        # reasoning itself, so the answer's grammar starts from its first token.
        {"type": "adaptive"},
    ],
    ids=["enabled", "cut-at-budget"],
)
def test_thinking_is_free_and_the_answer_constrained(
    model_client: anthropic.Anthropic, thinking: dict[str, Any]
) -> None:
    max_tokens = 1600 if thinking["type"] == "enabled" else 300
    message = _create(model_client, PERSON, thinking=thinking, max_tokens=max_tokens)
    kinds = [b.type for b in message.content]
    assert kinds[0] == "thinking" and kinds[-1] == "text"
    assert message.stop_reason == "end_turn"
    _valid(message.content[-1].text, PERSON)


def test_tools_or_answer(model_client: anthropic.Anthropic) -> None:
    """With tools on ``auto``, the reply is calls or an answer in the format.

    One call at most: parallel calls are unbounded in number, so a model may
    call again until ``max_tokens`` (seen once through llama-server).
    """
    tool = {
        "name": "lookup",
        "description": "Look a user up by name.",
        "input_schema": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12}},
            "required": ["name"],
            "additionalProperties": False,
        },
    }
    message = _create(
        model_client,
        PERSON,
        tools=[tool],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    if message.stop_reason == "tool_use":
        calls = [b for b in message.content if b.type == "tool_use"]
        assert len(calls) == 1 and calls[0].name == "lookup"
        for call in calls:
            jsonschema.validate(call.input, tool["input_schema"])
    else:
        assert message.stop_reason == "end_turn"
        _valid(message.content[0].text, PERSON)


def test_strict_tool_input_validates(model_client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            "day": {"type": "string", "format": "date"},
        },
        "required": ["passengers", "day"],
        "additionalProperties": False,
    }
    message = model_client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "Book a flight for ten people tomorrow."}],
        tools=[{"name": "book", "description": "Book.", "input_schema": schema, "strict": True}],
        tool_choice={"type": "tool", "name": "book", "disable_parallel_tool_use": True},
    )
    call = next(b for b in message.content if b.type == "tool_use")
    jsonschema.validate(call.input, schema, format_checker=jsonschema.FormatChecker())


def test_count_tokens_counts_the_format(model_client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": ASK}]
    plain = model_client.messages.count_tokens(model=MODEL, messages=messages)
    fmt = {"format": {"type": "json_schema", "schema": PERSON}}
    counted = model_client.messages.count_tokens(model=MODEL, messages=messages, output_config=fmt)
    assert counted.input_tokens > plain.input_tokens
    created = _create(model_client, PERSON)
    usage = created.usage
    total = (
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )
    assert total == counted.input_tokens


# --- refusals: no model output involved -------------------------------------------


def _post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 50, **body},
        headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
        timeout=60,
    )


def _format(schema: Any) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "schema": schema}}


USER = [{"role": "user", "content": "Hi"}]

REFUSED = [
    (
        "invalid schema",
        {"messages": USER, "output_config": _format({"type": "object", "properties": 3})},
        "output_config.format.schema.properties: not a valid JSON Schema",
    ),
    (
        "oneOf",
        {"messages": USER, "output_config": _format({"oneOf": [{"type": "string"}]})},
        "output_config.format.schema.oneOf",
    ),
    (
        "uniqueItems",
        {
            "messages": USER,
            "output_config": _format(
                {
                    "type": "object",
                    "properties": {"xs": {"type": "array", "uniqueItems": True}},
                }
            ),
        },
        "output_config.format.schema.properties.xs.uniqueItems",
    ),
    (
        "strict tool",
        {
            "messages": USER,
            "tools": [
                {
                    "name": "t",
                    "strict": True,
                    "input_schema": {
                        "type": "object",
                        "properties": {"m": {"type": "object", "minProperties": 1}},
                    },
                }
            ],
        },
        "tools.0.input_schema.properties.m.minProperties",
    ),
    (
        "prefill",
        {
            "messages": [*USER, {"role": "assistant", "content": "{"}],
            "output_config": _format(PERSON),
        },
        "prefilling",
    ),
    (
        "both spellings",
        {
            "messages": USER,
            "output_config": _format(PERSON),
            "output_format": {"type": "json_schema", "schema": PERSON},
        },
        "output_format",
    ),
    (
        "invalid tool schema",
        {
            "messages": USER,
            "tools": [{"name": "t", "input_schema": {"type": "object", "required": 5}}],
        },
        "tools.0.input_schema.required: not a valid JSON Schema",
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(embedded_server: Server, case: str, body: dict[str, Any], expected: str) -> None:
    response = _post(embedded_server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert expected in error["message"]


def test_count_tokens_refuses_the_same(embedded_server: Server) -> None:
    response = httpx.post(
        f"{embedded_server.url}/v1/messages/count_tokens",
        json={"model": MODEL, "messages": USER, "output_config": _format({"oneOf": [{}]})},
        headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400
    assert "output_config.format.schema.oneOf" in response.json()["error"]["message"]


def test_models_say_structured_outputs(model_client: anthropic.Anthropic) -> None:
    info = model_client.models.retrieve(MODEL)
    assert info.capabilities is not None
    assert info.capabilities.structured_outputs.supported is True

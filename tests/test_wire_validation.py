"""The request validator: any JSON gives a model or a 400 naming a path, never a crash."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.conversation import Capabilities, build_conversation
from parley.errors import InvalidRequestError
from parley.wire.parse import parse
from parley.wire.requests import CreateMessageRequest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

block = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "image", "document", "tool_use", "tool_result", "thinking", "nope"]
        )
    },
    optional={
        "text": json_values,
        "source": json_values,
        "id": json_values,
        "input": json_values,
        "content": json_values,
    },
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "bot"]),
        "content": st.text(max_size=5) | st.lists(block, max_size=3),
    }
)
body = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "max_tokens": st.integers(-2, 10),
        "messages": st.lists(message, max_size=4),
    },
    optional={
        "system": json_values,
        "stop_sequences": json_values,
        "tools": json_values,
        "thinking": json_values,
        "extra": json_values,
    },
)


def check(raw: bytes) -> None:
    try:
        request = parse(CreateMessageRequest, raw)
    except InvalidRequestError as exc:
        assert exc.message
        return
    try:
        build_conversation(request, Capabilities(tools=True), model="m")
    except InvalidRequestError as exc:
        assert exc.message


@settings(max_examples=400, deadline=None)
@given(body)
def test_structured_garbage(data: dict[str, Any]) -> None:
    check(json.dumps(data).encode())


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json(data: Any) -> None:
    check(json.dumps(data).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes(data: bytes) -> None:
    check(data)

"""tool_use / tool_result pairing across turns, as the API checks it (in-process, no model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.conversation import Capabilities, Conversation, build_conversation
from parley.errors import InvalidRequestError
from parley.wire.parse import parse
from parley.wire.requests import CreateMessageRequest

TOOLS = [{"name": "t", "input_schema": {"type": "object"}}]


def use(*ids: str) -> dict[str, Any]:
    blocks = [{"type": "tool_use", "id": i, "name": "t", "input": {}} for i in ids]
    return {"role": "assistant", "content": [{"type": "text", "text": "calling"}, *blocks]}


def result(tool_use_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": "r"}


def build(*messages: dict[str, Any]) -> Conversation:
    body = {"model": "m", "max_tokens": 5, "tools": TOOLS, "messages": list(messages)}
    request = parse(CreateMessageRequest, json.dumps(body).encode())
    return build_conversation(request, Capabilities(tools=True), model="m")


def refusal(*messages: dict[str, Any]) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        build(*messages)
    return caught.value.message


Q = {"role": "user", "content": "q"}


def test_paired_history_is_accepted() -> None:
    build(
        Q,
        use("toolu_a", "toolu_b"),
        {
            "role": "user",
            "content": [result("toolu_b"), result("toolu_a"), {"type": "text", "text": "go on"}],
        },
    )


def test_results_split_over_merged_user_messages_are_accepted() -> None:
    build(
        Q,
        use("toolu_a", "toolu_b"),
        {"role": "user", "content": [result("toolu_a")]},
        {"role": "user", "content": [result("toolu_b")]},
    )


def test_tool_use_without_result_in_next_user_message() -> None:
    message = refusal(
        Q, use("toolu_a", "toolu_b"), {"role": "user", "content": [result("toolu_a")]}
    )
    assert message == (
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
        "after: toolu_b. Each `tool_use` block must have a corresponding `tool_result` "
        "block in the next message."
    )


def test_tool_use_answered_by_plain_text() -> None:
    message = refusal(Q, use("toolu_a"), {"role": "user", "content": "no results"})
    assert message.startswith("messages.1: `tool_use` ids were found without")
    assert "toolu_a" in message


def test_result_after_text_is_not_immediately_after() -> None:
    late = {"role": "user", "content": [{"type": "text", "text": "x"}, result("toolu_a")]}
    assert refusal(Q, use("toolu_a"), late).startswith("messages.1: `tool_use` ids")


def test_unexpected_tool_use_id() -> None:
    message = refusal(
        Q, use("toolu_a"), {"role": "user", "content": [result("toolu_a"), result("toolu_x")]}
    )
    assert message == (
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: "
        "toolu_x. Each `tool_result` block must have a corresponding `tool_use` block in "
        "the previous message."
    )


def test_result_with_no_previous_assistant_turn() -> None:
    first = {"role": "user", "content": [result("toolu_a")]}
    assert refusal(first).startswith("messages.0.content.0: unexpected `tool_use_id`")


def test_result_answering_an_older_turn_is_unexpected() -> None:
    message = refusal(
        Q,
        use("toolu_a"),
        {"role": "user", "content": [result("toolu_a")]},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": [result("toolu_a")]},
    )
    assert message.startswith("messages.4.content.0: unexpected `tool_use_id`")


def test_trailing_tool_use_is_left_to_the_prefill_rule() -> None:
    # No next user message: the pairing rule does not apply, the prefill rule does.
    assert "final assistant message" in refusal(Q, use("toolu_a"))

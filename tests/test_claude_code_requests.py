"""Requests of the newest Claude Code, as it sent them, replayed against parley.

``tests/data/claude-code/`` holds the first ``POST /v1/messages`` of a release
(headers and body, logged by a proxy in front of parley; the API key and device
id replaced): ``*-print.json`` from ``claude -p``, ``*-interactive.json`` from
``claude`` in a terminal. Each must pass validation: on the scripted engine it is
answered, on the embedded model's default context it is the API's "prompt is too
long", with the count ``count_tokens`` gives (the figures the README states).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley.conversation import Capabilities, build_conversation
from parley.errors import InvalidRequestError
from parley.wire import requests as wr
from parley.wire.parse import parse
from tests.conftest import InProcess, Server

CAPTURES = sorted((Path(__file__).parent / "data" / "claude-code").glob("*.json"))
# SmolLM2's tokens for each capture's first request (README, "Claude Code with parley").
TOKENS = {"2.1.332-print.json": 12169, "2.1.332-interactive.json": 13591}
COUNTED = {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
COUNTED |= {"cache_control", "context_management"}


def load(capture: Path) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(capture.read_text())
    return recorded


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_the_recorded_first_request_is_answered(capture: Path, in_process: InProcess) -> None:
    recorded = load(capture)
    response = in_process.post(
        recorded["path"], content=json.dumps(recorded["body"]), headers=recorded["headers"]
    )
    assert response.status_code == 200, response.text
    kinds = [event["type"] for event in sse_events(response.text)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "error" not in kinds


def test_every_capture_has_its_token_count() -> None:
    assert {capture.name for capture in CAPTURES} == set(TOKENS)


@pytest.mark.model
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_on_the_default_context_the_recorded_first_request_is_too_long(
    capture: Path, embedded_server: Server
) -> None:
    import httpx

    recorded = load(capture)
    headers = recorded["headers"]
    counted = {k: v for k, v in recorded["body"].items() if k in COUNTED}
    url = embedded_server.url
    count = httpx.post(
        f"{url}/v1/messages/count_tokens?beta=true", json=counted, headers=headers, timeout=60
    )
    assert count.status_code == 200, count.text
    tokens = count.json()["input_tokens"]
    assert tokens == TOKENS[capture.name]
    # Refused before any generation: max_tokens (128,000) bounds nothing here.
    response = httpx.post(
        f"{url}{recorded['path']}", json=recorded["body"], headers=headers, timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"prompt is too long: {tokens} tokens > 8191 maximum")


USER = {"role": "user", "content": "q"}


def build(**fields: Any) -> Any:
    body = {"model": "m", "max_tokens": 8192, "thinking": {"type": "adaptive"}, **fields}
    request = parse(wr.CreateMessageRequest, json.dumps(body).encode())
    return build_conversation(request, Capabilities(tools=True), model="m")


def test_a_system_messages_effort_sets_the_thinking_budget_from_its_turn_on() -> None:
    high = {"effort": "high"}
    assert build(messages=[USER], output_config=high).thinking_budget == 4096
    low = {"role": "system", "content": "s", "output_config": {"effort": "low"}}
    assert build(messages=[USER, low], output_config=high).thinking_budget == 1024
    answer = {"role": "assistant", "content": "a"}
    later = [USER, low, answer, USER]
    assert build(messages=later, output_config=high).thinking_budget == 1024
    unset = {"role": "system", "content": "s", "output_config": {}}
    assert build(messages=[USER, unset], output_config=high).thinking_budget == 4096


def test_a_system_message_with_only_an_effort_is_no_turn() -> None:
    # What `claude --bare` sends after the prompt.
    only = {"role": "system", "content": [], "output_config": {"effort": "medium"}}
    conversation = build(messages=[USER, only])
    assert [turn.role for turn in conversation.turns] == ["user"]
    with pytest.raises(InvalidRequestError, match="non-empty content"):
        build(messages=[USER, {"role": "system", "content": []}])
    with pytest.raises(InvalidRequestError, match="non-empty content"):
        build(messages=[USER, {"role": "system", "content": [], "output_config": {}}])


@pytest.mark.parametrize("display", ["summarized", "omitted", "updates"])
def test_thinking_display_values_are_accepted(display: str) -> None:
    thinking = {"type": "adaptive", "display": display}
    assert build(messages=[USER], thinking=thinking).thinking_budget is not None


def test_safeguards_are_accepted_and_unknown_kinds_named() -> None:
    safeguard = {"type": "dangerous_tool_use", "classifier_context": {"v": 1}}
    build(messages=[USER], safeguards=[safeguard])
    with pytest.raises(InvalidRequestError, match=r"safeguards\.0"):
        build(messages=[USER], safeguards=[{"type": "other"}])

"""Extended thinking on the real embedded model: blocks, budgets, signatures, validation.

Thinking requires temperature 1 (as in the public API), so these tests check
structure and limits, never content. Every generation is bounded by a small
max_tokens: adaptive thinking gets at most half of it. Enabled thinking needs
``budget_tokens >= 1024`` and more max_tokens than that, which SmolLM2 at
temperature 1 may well use up (minutes on a busy machine), so the one test of
it on the model leaves once the thinking block is under way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import MODEL, Server

pytestmark = pytest.mark.model

ASK = [{"role": "user", "content": "What is 17 times 23?"}]


def thinking_tokens(client: anthropic.Anthropic, text: str) -> int:
    """Tokens of ``text`` as the model counts them (prompt with it minus without)."""
    base = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x"}])
    full = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x" + text}]
    )
    return full.input_tokens - base.input_tokens


THINK = {"type": "adaptive"}
LOW = {"effort": "low"}  # 1024 tokens of thinking, and at most half of max_tokens


@pytest.fixture(scope="module")
def thought(model_client: anthropic.Anthropic) -> anthropic.types.Message:
    return model_client.messages.create(
        model=MODEL,
        max_tokens=128,
        thinking=THINK,  # type: ignore[arg-type]
        output_config=LOW,  # type: ignore[arg-type]
        messages=ASK,  # type: ignore[arg-type]
    )


def test_thinking_block_then_answer(
    model_client: anthropic.Anthropic, thought: anthropic.types.Message
) -> None:
    kinds = [b.type for b in thought.content]
    assert kinds[0] == "thinking"
    block = thought.content[0]
    assert block.type == "thinking" and block.thinking and block.signature
    assert thinking_tokens(model_client, block.thinking) <= 64 + 2
    assert thought.usage.output_tokens <= 128
    if thought.stop_reason == "end_turn":
        # The model may end its turn right after its reasoning (seen through
        # llama-server, whose greedy answers vary): then no text block follows.
        assert kinds in (["thinking", "text"], ["thinking"])


def test_adaptive_thinking_respects_its_budget(model_client: anthropic.Anthropic) -> None:
    # Medium effort (2048 tokens) gets at most half of max_tokens here: 40 tokens.
    message = model_client.messages.create(
        model=MODEL,
        max_tokens=80,
        thinking=THINK,  # type: ignore[arg-type]
        messages=ASK,  # type: ignore[arg-type]
    )
    assert message.content[0].type == "thinking"
    assert thinking_tokens(model_client, message.content[0].thinking) <= 40 + 2
    assert [b.type for b in message.content][:2] == [
        "thinking",
        "text",
    ] or message.stop_reason == "max_tokens"


def test_streamed_thinking_events(model_client: anthropic.Anthropic) -> None:
    with model_client.messages.stream(
        model=MODEL,
        max_tokens=64,
        thinking=THINK,  # type: ignore[arg-type]
        messages=ASK,  # type: ignore[arg-type]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [
        (e.type, getattr(getattr(e, "delta", None), "type", None))
        for e in events
        if e.type.startswith("content_block")
    ]
    assert raw[0] == ("content_block_start", None)
    starts = [e for e in events if e.type == "content_block_start"]
    assert starts[0].content_block.type == "thinking"
    assert starts[0].content_block.thinking == "" and starts[0].content_block.signature == ""
    kinds = [k for _, k in raw]
    assert "thinking_delta" in kinds
    at = kinds.index("signature_delta")
    assert raw[at + 1] == ("content_block_stop", None)
    assert final.content[0].type == "thinking" and final.content[0].signature


def test_enabled_thinking_streams_a_thinking_block(model_server: Server) -> None:
    before = model_server.wait_idle(MODEL)
    body = {
        "model": MODEL,
        "max_tokens": 1100,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
        "messages": ASK,
    }
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", model_server.url + "/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if events[-1].get("delta", {}).get("type") == "thinking_delta":
                    break  # it thinks: enough (left alone it may think for 1024 tokens)
    assert [e["type"] for e in events[:2]] == ["message_start", "content_block_start"]
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    after = model_server.wait_idle(MODEL)
    assert after["cancelled"] == before["cancelled"] + 1  # leaving ended the generation


def test_signatures_round_trip_and_tampering_is_refused(
    model_client: anthropic.Anthropic, model_server: Server, thought: anthropic.types.Message
) -> None:
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in thought.content],
        },
        {"role": "user", "content": "And 2 + 2?"},
    ]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ok = model_client.messages.count_tokens(model=MODEL, messages=history, thinking=thinking)  # type: ignore[arg-type]
    assert ok.input_tokens > 0
    tampered = [dict(b) for b in history[1]["content"]]
    tampered[0]["thinking"] += " (edited)"
    for path in ("/v1/messages/count_tokens", "/v1/messages"):
        body: dict[str, Any] = {
            "model": MODEL,
            "thinking": thinking,
            "messages": [history[0], {"role": "assistant", "content": tampered}, history[2]],
        }
        if path == "/v1/messages":
            body["max_tokens"] = 1100
        response = httpx.post(model_server.url + path, json=body, timeout=60)
        assert response.status_code == 400
        assert "Invalid `signature` in `thinking` block" in response.json()["error"]["message"]
        assert "messages.1.content.0.signature" in response.json()["error"]["message"]


def test_count_tokens_with_thinking_equals_usage(
    model_client: anthropic.Anthropic, thought: anthropic.types.Message
) -> None:
    counted = model_client.messages.count_tokens(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        thinking=THINK,  # type: ignore[arg-type]
        output_config=LOW,  # type: ignore[arg-type]
    )
    assert counted.input_tokens == thought.usage.input_tokens
    # Enabled thinking renders the same prompt.
    enabled = model_client.messages.count_tokens(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert enabled.input_tokens == counted.input_tokens


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 500}},
            "greater than or equal to 1024",
        ),
        (
            {"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            "must be greater than thinking.budget_tokens",
        ),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
            },
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "temperature": 0.5,
            },
            "`temperature` may only be set to 1 when thinking is enabled.",
        ),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "top_k": 5,
            },
            "`top_k` may not be set when thinking is enabled.",
        ),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [*ASK, {"role": "assistant", "content": "The answer is"}],
            },
            "must start with a thinking block",
        ),
    ],
)
def test_thinking_validation(model_server: Server, extra: dict[str, Any], needle: str) -> None:
    body = {"model": MODEL, "messages": ASK, **extra}
    response = httpx.post(model_server.url + "/v1/messages", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_scripted_engine_thinks_from_its_rules(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="scripted",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "echo this"}],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].signature  # type: ignore[union-attr]


def test_redacted_thinking_round_trip(server_factory: Any) -> None:
    from tests.conftest import RULES

    server: Server = server_factory(
        "--engine", "scripted", "--script", str(RULES), "--redact-thinking"
    )
    client = server.client()
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ask = [{"role": "user", "content": "echo this"}]
    message = client.messages.create(
        model="scripted", max_tokens=2000, thinking=thinking, messages=ask
    )  # type: ignore[arg-type]
    assert [b.type for b in message.content] == ["redacted_thinking", "text"]
    sealed = message.content[0]
    assert sealed.type == "redacted_thinking" and sealed.data
    assert "scripted engine" not in sealed.data  # the reasoning text is not readable

    with client.messages.stream(
        model="scripted", max_tokens=2000, thinking=thinking, messages=ask
    ) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    first = events[1]
    assert first.type == "content_block_start" and first.content_block.type == "redacted_thinking"
    assert events[2].type == "content_block_stop"
    assert [b.type for b in final.content] == ["redacted_thinking", "text"]

    history: list[Any] = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": "again"},
    ]
    assert (
        client.messages.count_tokens(
            model="scripted", messages=history, thinking=thinking
        ).input_tokens
        > 0
    )  # type: ignore[arg-type]
    bad = [dict(b) for b in history[1]["content"]]
    bad[0]["data"] = bad[0]["data"][:-8] + "AAAAAAA="
    response = httpx.post(
        server.url + "/v1/messages/count_tokens",
        timeout=30,
        json={
            "model": "scripted",
            "thinking": thinking,
            "messages": [ask[0], {"role": "assistant", "content": bad}, history[2]],
        },
    )
    assert response.status_code == 400
    assert (
        "messages.1.content.0.data: Invalid `data` in `redacted_thinking` block"
        in response.json()["error"]["message"]
    )


def test_a_template_with_a_reasoning_mode_thinks_through_it(server_factory: Any) -> None:
    template = Path(__file__).parent / "data" / "reasoning.jinja"
    server: Server = server_factory("--chat-template", str(template))
    client = server.client()
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        thinking=THINK,  # type: ignore[arg-type]
        messages=ASK,  # type: ignore[arg-type]
    )
    assert message.content[0].type == "thinking" and message.content[0].signature
    off = client.messages.count_tokens(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    on = client.messages.count_tokens(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    # Off: the template's empty "<think>\n\n</think>\n\n"; on: parley's open "<think>\n".
    assert off.input_tokens > on.input_tokens

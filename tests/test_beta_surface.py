"""The Python SDK's beta surface behaves like the GA calls (issue: real clients).

Streaming runs over a socket; plain calls go to the app in this process."""

from __future__ import annotations

import anthropic

from tests.conftest import InProcess, Server

BETAS = [
    "prompt-caching-2024-07-31",
    "interleaved-thinking-2025-05-14",
    "some-future-beta-2099-01-01",
]


def test_beta_messages_create_stream_and_count(scripted_server: Server) -> None:
    client = scripted_server.client()
    messages = [{"role": "user", "content": "hello beta"}]
    created = client.beta.messages.create(
        model="scripted", max_tokens=20, messages=messages, betas=BETAS
    )  # type: ignore[arg-type]
    assert created.content[0].type == "text" and created.content[0].text == "hello beta"
    with client.beta.messages.stream(
        model="scripted", max_tokens=20, messages=messages, betas=BETAS
    ) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.content[0].text == "hello beta"  # type: ignore[union-attr]
    counted = client.beta.messages.count_tokens(model="scripted", messages=messages, betas=BETAS)  # type: ignore[arg-type]
    assert counted.input_tokens == created.usage.input_tokens


def test_beta_models(in_process: InProcess) -> None:
    client = in_process.client()
    ga = [m.id for m in client.models.list(limit=1000)]
    beta = [m.id for m in client.beta.models.list(limit=5, betas=BETAS)]
    assert beta == ga
    assert client.beta.models.retrieve("scripted", betas=BETAS).id == "scripted"


def test_beta_tools(in_process: InProcess) -> None:
    client = in_process.client()
    message = client.beta.messages.create(
        model="scripted",
        max_tokens=50,
        betas=BETAS,
        tools=[
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        messages=[{"role": "user", "content": "weather in Paris"}],
    )
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]


def test_beta_errors(in_process: InProcess) -> None:
    client = in_process.client()
    try:
        client.beta.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}], betas=BETAS
        )  # type: ignore[arg-type]
    except anthropic.NotFoundError as exc:
        assert exc.status_code == 404
    else:
        raise AssertionError("expected NotFoundError")

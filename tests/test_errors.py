"""Every error class the SDK raises, with its status and Anthropic error type."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Gate, InProcess, Server, write_rules

HI = [{"role": "user", "content": "hi"}]


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["type"] == "error"
    assert body["request_id"] == response.headers["request-id"]
    assert body["request_id"].startswith("req_")
    return body["error"]  # type: ignore[no-any-return]


def post(
    target: Server | InProcess, body: object | bytes, path: str = "/v1/messages", **kw: Any
) -> httpx.Response:
    """POST to a server over a socket, or to the app in this process."""
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    payload: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    if isinstance(target, InProcess):
        return target.post(path, headers=headers, **payload, **kw)
    return httpx.post(target.url + path, headers=headers, timeout=60, **payload, **kw)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "foo": 1}]}
                ],
            },
            "messages.0.content.0.foo: Extra inputs are not permitted",
        ),
        (
            {"model": "scripted", "max_tokens": 5, "messages": HI, "bogus": True},
            "bogus: Extra inputs are not permitted",
        ),
        (
            {"model": "scripted", "messages": HI},
            "max_tokens: Field required",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/tiff",
                                    "data": "AA==",
                                },
                            }
                        ],
                    },
                ],
            },
            "messages.2.content.0.source.media_type: Input should be",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "AA==",
                                },
                            }
                        ],
                    }
                ],
            },
            "messages.0.content.0: model 'scripted' does not support image input",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "web_search_tool_result", "tool_use_id": "x", "content": []}
                        ],
                    }
                ],
            },
            "messages.0.content.0: content blocks of type 'web_search_tool_result' are not supported by parley yet",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "nope"}]}],
            },
            "messages.0.content.0: Input should be a content block whose 'type' is one of",
        ),
        (
            {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]},
            "messages.0: all messages must have non-empty content",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "trailing "},
                ],
            },
            "final assistant content cannot end with trailing whitespace",
        ),
        (
            {"model": "scripted", "max_tokens": 5, "messages": []},
            "messages: List should have at least 1 item",
        ),
        (
            {"model": "scripted", "max_tokens": -1, "messages": HI},
            "max_tokens: Input should be greater than or equal to 0",
        ),
        (
            {"model": "scripted", "max_tokens": "5", "messages": HI},
            "max_tokens: Input should be a valid integer",
        ),
        (
            {"model": "scripted", "max_tokens": 5, "messages": HI, "temperature": 1.5},
            "temperature: Input should be less than or equal to 1",
        ),
        (
            {"model": "scripted", "max_tokens": 5, "messages": HI, "container": "c1"},
            "container: this parameter is not supported by parley yet",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5000,
                "messages": HI,
                "thinking": {"type": "enabled", "budget_tokens": 100},
            },
            "thinking.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": HI,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools.0: server tool 'web_search_20250305' is not supported by parley yet",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "r"}
                        ],
                    },
                ],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            },
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
        ),
        (
            {
                "model": "scripted",
                "max_tokens": 5,
                "cache_control": {"type": "ephemeral"},
                "system": [
                    {
                        "type": "text",
                        "text": f"s{i}",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                    for i in range(4)
                ],
                "messages": HI,
            },
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            {"model": "scripted", "max_tokens": 10**9, "messages": HI},
            "max_tokens: 1000000000 > 64000, which is the maximum allowed number of output tokens",
        ),
    ],
)
def test_invalid_requests_name_the_path(in_process: InProcess, body: object, message: str) -> None:
    response = post(in_process, body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_sdk_raises_bad_request(scripted_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        scripted_client.messages.create(
            model="scripted",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "text", "text": "x", "foo": 1}]}],  # type: ignore[typeddict-unknown-key]
        )
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"model": "scripted", "max_tokens": 5, "messages": [', "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
        (
            b'{"model": "scripted", "max_tokens": NaN, "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens",
        ),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (
            b'{"model": "scripted", "max_tokens": 5, "metadata": {"user_id": '
            + b"[" * 50000
            + b"]" * 50000
            + b"}}",
            "not valid JSON: recursion limit exceeded",
        ),
    ],
)
def test_malformed_bodies(in_process: InProcess, raw: bytes, needle: str) -> None:
    response = post(in_process, raw)
    assert response.status_code == 400
    assert needle in error_of(response)["message"]


def test_wrong_content_type(in_process: InProcess) -> None:
    response = post(in_process, b"model=x", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert "Content-Type must be application/json" in error_of(response)["message"]


def test_unknown_model_is_404(in_process: InProcess) -> None:
    scripted_client = in_process.client()
    with pytest.raises(anthropic.NotFoundError) as caught:
        scripted_client.messages.create(model="no-such-model", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["error"] == {
        "type": "not_found_error",
        # The API's message, then the ids that exist here.
        "message": "model: no-such-model (served here: scripted; any claude-* id reaches scripted)",
    }  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        scripted_client.messages.count_tokens(model="no-such-model", messages=HI)  # type: ignore[arg-type]


def test_unknown_route_and_wrong_method(in_process: InProcess) -> None:
    missing = in_process.http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert error_of(missing)["type"] == "not_found_error"
    wrong = in_process.http.get("/v1/messages")
    assert wrong.status_code == 405
    assert error_of(wrong)["type"] == "invalid_request_error"


def test_body_over_32mb_is_413_without_reading_it(
    scripted_client: anthropic.Anthropic, scripted_server: Server
) -> None:
    big = "x" * (33 * 1024 * 1024)
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        scripted_client.messages.create(
            model="scripted", max_tokens=5, messages=[{"role": "user", "content": big}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]

    # A chunked body (no Content-Length) is cut off while it streams.
    def chunks() -> Any:
        yield b'{"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * (1024 * 1024)
        yield b'"}]}'

    response = httpx.post(
        scripted_server.url + "/v1/messages",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    assert error_of(response)["type"] == "request_too_large"


def test_every_response_has_a_request_id(scripted_server: Server) -> None:
    for response in (
        httpx.get(scripted_server.url + "/"),
        httpx.get(scripted_server.url + "/v1/models"),
        post(scripted_server, {"model": "scripted", "max_tokens": 5, "messages": HI}),
        post(scripted_server, {"model": "scripted"}),
    ):
        assert response.headers["request-id"].startswith("req_")


def test_health_endpoints(scripted_server: Server) -> None:
    assert httpx.get(scripted_server.url + "/").status_code == 200
    assert httpx.head(scripted_server.url + "/").status_code == 200


def test_authentication(server_factory: Callable[..., Server]) -> None:
    hashed = "sha256:" + hashlib.sha256(b"secret-3").hexdigest()
    server = server_factory(
        "--engine",
        "scripted",
        "--api-key",
        "secret-1",
        "--api-key",
        "secret-2",
        "--api-key",
        hashed,
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        server.client(api_key="wrong").messages.create(model="scripted", max_tokens=5, messages=HI)
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.get(server.url + "/v1/models")
    assert missing.status_code == 401
    # x-api-key (what the SDK's api_key sends) and Authorization: Bearer both work.
    ok = server.client(api_key="secret-1").messages.create(
        model="scripted", max_tokens=5, messages=HI
    )
    assert ok.type == "message"
    with anthropic.Anthropic(
        base_url=server.url, auth_token="secret-2", max_retries=0, _strict_response_validation=True
    ) as bearer:
        assert bearer.models.list().data
    # A key may be configured by its SHA-256 only.
    assert server.client(api_key="secret-3").models.list().data
    # Health checks stay open.
    assert httpx.get(server.url + "/").status_code == 200
    assert "secret-1" not in server.log() and "secret-3" not in server.log()


def test_queue_full_is_529(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    # One slot, one waiting place; the answers wait at the gate until the test opens it.
    hold = {"match": {"user": "occupy"}, "reply": {"text": "done", "hold": str(gate.path)}}
    rules = write_rules(tmp_path / "overload.yaml", [hold], slots=1, max_queue=1)
    server = server_factory("--engine", "scripted", "--script", str(rules))
    client = server.client()
    results: list[str] = []

    def occupy() -> None:
        try:
            final = client.messages.create(
                model="scripted", max_tokens=5, messages=[{"role": "user", "content": "occupy"}]
            )
            results.append(final.stop_reason or "")
        except Exception as exc:  # reported through `results`
            results.append(repr(exc))

    threads = [threading.Thread(target=occupy) for _ in range(2)]
    for thread in threads:
        thread.start()
    # One request running (held at the gate), one waiting: the queue is full.
    server.wait_stats("scripted", running=1, held=1, waiting=1, cancelled=0)
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model="scripted", max_tokens=5, messages=HI)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert caught.value.response.headers.get("retry-after")
    gate.open()
    for thread in threads:
        thread.join(timeout=60)
    assert results == ["end_turn", "end_turn"]


BASE = '{"model":"scripted","max_tokens":10,"messages":[{"role":"user","content":"hi"}]%s}'


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (BASE % ',"temperature":NaN', "temperature: Input should be a finite number"),
        (BASE % ',"temperature":Infinity', "temperature: Input should be a finite number"),
        (BASE % ',"model":"other"', "the key 'model' twice in one object"),
        (
            BASE.replace('"role":"user"', '"role":"user","role":"user"') % "",
            "messages.0: the object has the key 'role' twice",
        ),
        (
            b'{"model":"scripted","max_tokens":10,"messages":[{"role":"user","content":"\xff"}]}',
            "not valid JSON",
        ),
        (
            json.dumps(
                {
                    "model": "scripted",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "x"}] * 100_001,
                }
            ),
            "messages: List should have at most 100000 items",
        ),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (BASE.replace('"max_tokens":10', '"max_tokens":-1') % "", "max_tokens: Input should be"),
    ],
    ids=[
        "nan",
        "infinity",
        "duplicate-key",
        "duplicate-nested-key",
        "invalid-utf8",
        "too-many-messages",
        "deep",
        "negative",
    ],
)
def test_hostile_bodies_get_a_precise_400(
    scripted_server: Server, raw: str | bytes, needle: str
) -> None:
    response = httpx.post(
        f"{scripted_server.url}/v1/messages",
        content=raw,
        headers={"content-type": "application/json", "x-api-key": "k"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]

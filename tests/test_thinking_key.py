"""Thinking signatures against hostile history and a damaged key file (scripted engine).

The key lives in the data dir; these tests start their own servers on data
dirs they prepare, and forge signatures the way a client holding a guess of
the key would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx
import pytest

from tests.conftest import Server

THINKING = {"type": "enabled", "budget_tokens": 1024}
ASK = {"role": "user", "content": "echo this"}


def history_with(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "scripted",
        "thinking": THINKING,
        "messages": [
            ASK,
            {"role": "assistant", "content": [block, {"type": "text", "text": "echo"}]},
            {"role": "user", "content": "again"},
        ],
    }


def forged(key: bytes, thinking: str) -> str:
    """A signature as parley makes it, under ``key``."""
    digest = hmac.new(key, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"parley1" + digest).decode()


def count(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/messages/count_tokens", json=body, timeout=60)


def assert_served(server: Server) -> None:
    """Another client's thinking request, with its signature sent back, works."""
    client = server.client()
    message = client.messages.create(
        model="scripted",
        max_tokens=2000,
        thinking=THINKING,  # type: ignore[arg-type]
        messages=[ASK],  # type: ignore[list-item]
    )
    block = message.content[0].model_dump()
    assert block["type"] == "thinking"
    assert count(server, history_with(block)).status_code == 200


@pytest.mark.parametrize(
    "signature",
    ["é" * 12, "parley1\u2603", "\U0001f600", "cGFybGV5MQ==\u00a0"],
    ids=["latin", "snowman", "emoji", "nbsp"],
)
def test_a_non_ascii_signature_is_a_400(scripted_server: Server, signature: str) -> None:
    block = {"type": "thinking", "thinking": "I think.", "signature": signature}
    for path in ("/v1/messages/count_tokens", "/v1/messages"):
        body = {**history_with(block), "max_tokens": 2000}
        if path.endswith("count_tokens"):
            del body["max_tokens"]
        response = httpx.post(scripted_server.url + path, json=body, timeout=60)
        assert response.status_code == 400, response.text  # was a 500 (TypeError)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"] == (
            "messages.1.content.0.signature: Invalid `signature` in `thinking` block"
        )
    assert_served(scripted_server)

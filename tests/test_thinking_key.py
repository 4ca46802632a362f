"""Thinking signatures against hostile history and a damaged key file (scripted engine).

The key lives in the data dir; the key tests start their own servers on data
dirs they prepare, and forge signatures the way a client that guessed the
key would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RULES, Server, free_port, start_server, stop_server

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


def start_on(data: Path, tmp: Path) -> Server:
    return start_server(
        ["--engine", "scripted", "--script", str(RULES)], tmp, env={"PARLEY_DATA_DIR": str(data)}
    )


def test_an_empty_key_file_is_replaced_and_its_signatures_refused(tmp_path: Path) -> None:
    """An empty key (left by a crash between create and write) signed with b""."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "thinking.key").write_bytes(b"")
    server = start_on(data, tmp_path)
    try:
        key = (data / "thinking.key").read_bytes()
        assert len(key) == 32 and stat.S_IMODE((data / "thinking.key").stat().st_mode) == 0o600
        text = "I think the answer is 42."
        block = {"type": "thinking", "thinking": text, "signature": forged(b"", text)}
        refused = count(server, history_with(block))
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["message"] == (
            "messages.1.content.0.signature: Invalid `signature` in `thinking` block"
        )
        # The server signs with the new key, and another client is served as usual.
        message = server.client().messages.create(
            model="scripted",
            max_tokens=2000,
            thinking=THINKING,  # type: ignore[arg-type]
            messages=[ASK],  # type: ignore[list-item]
        )
        thought = message.content[0]
        assert thought.type == "thinking"
        assert thought.signature == forged(key, thought.thinking)
        assert_served(server)
    finally:
        stop_server(server)


@pytest.mark.parametrize("size", [1, 16, 31, 33, 4096])
def test_a_key_file_of_another_length_stops_start_up(tmp_path: Path, size: int) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    junk = b"k" * size
    (data / "thinking.key").write_bytes(junk)
    command = [sys.executable, "-m", "parley", "serve", "--engine", "scripted"]
    done = subprocess.run(
        [*command, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,  # a server that started anyway would run until then
        env={**os.environ, "PARLEY_DATA_DIR": str(data)},
    )
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"thinking.key holds {size} bytes, not a 32-byte thinking key" in lines[0]
    assert (data / "thinking.key").read_bytes() == junk  # left for the operator to decide
    # Once the file is gone, the server starts with a new key and serves.
    (data / "thinking.key").unlink()
    server = start_on(data, tmp_path)
    try:
        assert len((data / "thinking.key").read_bytes()) == 32
        assert_served(server)
    finally:
        stop_server(server)

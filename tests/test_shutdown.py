"""Graceful shutdown on SIGTERM: open streams end with an error event, batch
work is left in a safe state, and after a restart nothing is lost or doubled."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import start_server, stop_server
from tests.test_batches import request, results, wait_ended


def test_sigterm_ends_open_streams_with_an_error_event(tmp_path: Path) -> None:
    rules = tmp_path / "slow.yaml"
    rules.write_text("delay: 0.3\nrules: []\n")
    server = start_server(
        ["--engine", "scripted", "--script", str(rules), "--shutdown-grace", "1"], tmp_path
    )
    body = {
        "model": "scripted",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(["w"] * 60)}],  # 18 s of words
    }
    events: list[str] = []
    try:
        with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=60) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("event: "):
                    events.append(line[7:])
                    if events[-1] == "content_block_delta" and len(events) == 3:
                        sent = time.monotonic()
                        server.process.send_signal(signal.SIGTERM)
                if line.startswith("data: ") and events[-1] == "error":
                    error = json.loads(line[6:])["error"]
        assert events[0] == "message_start" and events[-1] == "error", events
        assert error["type"] == "overloaded_error" and "shutting down" in error["message"]
        assert time.monotonic() - sent < 8
        # uvicorn re-raises the signal once shut down, so the exit status says SIGTERM.
        assert server.process.wait(timeout=20) == -signal.SIGTERM
        assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)


def test_sigterm_mid_batch_then_restart_gives_exactly_one_result_each(tmp_path: Path) -> None:
    rules = tmp_path / "slow.yaml"
    rules.write_text("delay: 0.2\nrules: []\n")
    args = ["--engine", "scripted", "--script", str(rules), "--shutdown-grace", "1"]
    env = {"PARLEY_DATA_DIR": str(tmp_path / "data")}
    server = start_server(args, tmp_path, env)
    n = 20
    try:
        client = server.client()
        batch = client.messages.batches.create(
            requests=[request(f"r{i}", f"a b c {i}") for i in range(n)]  # type: ignore[misc]
        )
        deadline = time.monotonic() + 30
        while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == -signal.SIGTERM
        assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)
    restarted = start_server(args, tmp_path, env)
    try:
        client = restarted.client()
        assert wait_ended(client, batch.id).request_counts.succeeded == n
        got = results(client, batch.id)  # asserts no duplicates
        assert sorted(got) == sorted(f"r{i}" for i in range(n))
    finally:
        stop_server(restarted)

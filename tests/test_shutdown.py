"""Graceful shutdown on SIGTERM: open streams end with an error event, batch
work is left in a safe state, and after a restart nothing is lost or doubled."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Server, start_server, stop_server
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


def test_a_client_that_stops_reading_is_disconnected(
    server_factory: Callable[..., Server],
) -> None:
    import socket

    server = server_factory("--engine", "scripted", env={"PARLEY_SLOW_READER_TIMEOUT": "1"})
    words = " ".join(["word"] * 60_000)  # ~6 MB of events: far past any socket buffer
    body = json.dumps(
        {
            "model": "scripted",
            "max_tokens": 64_000,
            "stream": True,
            "messages": [{"role": "user", "content": words}],
        }
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        time.sleep(4)  # read nothing while the server's buffers fill
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    # The server gave up on the stalled reader: the stream ends before message_stop.
    assert b"event: message_start" in received
    assert b"event: message_stop" not in received
    assert "client stopped reading" in server.log()
    deadline = time.monotonic() + 10
    while server.stats()["scripted"].get("running", 0):
        assert time.monotonic() < deadline
        time.sleep(0.1)

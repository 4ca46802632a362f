"""Graceful shutdown on SIGTERM: open streams end with an error event, batch
work is left in a safe state, and after a restart nothing is lost or doubled."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Gate, Server, start_server, stop_server, wait_for, write_rules
from tests.test_batches import held_rules, request, results, wait_ended


def test_sigterm_ends_open_streams_with_an_error_event(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")  # never opened: the stream can only end by the shutdown
    words = " ".join(["w"] * 60)
    rule = {"match": {}, "reply": {"text": words, "hold": str(gate.path), "hold_after": 1}}
    rules = write_rules(tmp_path / "held.yaml", [rule])
    server = start_server(
        ["--engine", "scripted", "--script", str(rules), "--shutdown-grace", "1"], tmp_path
    )
    body = {
        "model": "scripted",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": words}],
    }
    events: list[str] = []
    try:
        with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=60) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("event: "):
                    events.append(line[7:])
                    if events[-1] == "content_block_delta" and len(events) == 3:
                        server.wait_stats("scripted", held=1)  # the rest of the answer waits
                        server.process.send_signal(signal.SIGTERM)
                if line.startswith("data: ") and events[-1] == "error":
                    error = json.loads(line[6:])["error"]
        assert events[0] == "message_start" and events[-1] == "error", events
        assert events.count("content_block_delta") == 1, events
        assert error["type"] == "overloaded_error" and "shutting down" in error["message"]
        # uvicorn re-raises the signal once shut down, so the exit status says SIGTERM.
        assert server.process.wait(timeout=20) == -signal.SIGTERM
        assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)


def test_sigterm_mid_batch_then_restart_gives_exactly_one_result_each(tmp_path: Path) -> None:
    n = 20
    texts = [f"a b c {i}" for i in range(n)]
    # The first four answer at once; the others wait at the gate until after the restart.
    rules, gate = held_rules(tmp_path, texts[4:])
    args = ["--engine", "scripted", "--script", str(rules), "--shutdown-grace", "1"]
    env = {"PARLEY_DATA_DIR": str(tmp_path / "data")}
    server = start_server(args, tmp_path, env)
    try:
        client = server.client()
        batch = client.messages.batches.create(
            requests=[request(f"r{i}", text) for i, text in enumerate(texts)]  # type: ignore[misc]
        )
        wait_for(
            lambda: client.messages.batches.retrieve(batch.id).request_counts.succeeded == 4,
            "four results",
        )
        server.wait_stats("scripted", held=4)  # the engine's four slots are in use
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == -signal.SIGTERM
        assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)
    gate.open()
    restarted = start_server(args, tmp_path, env)
    try:
        client = restarted.client()
        assert wait_ended(client, batch.id).request_counts.succeeded == n
        got = results(client, batch.id)  # asserts no duplicates
        assert sorted(got) == sorted(f"r{i}" for i in range(n))
        assert all(got[f"r{i}"].message.content[0].text == texts[i] for i in range(n))
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
        # Read nothing until the server gives up on this reader (its buffers fill first).
        wait_for(lambda: "client stopped reading" in server.log(), "the server to give up")
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    # The server gave up on the stalled reader: the stream ends before message_stop.
    assert b"event: message_start" in received
    assert b"event: message_stop" not in received
    server.wait_idle("scripted")

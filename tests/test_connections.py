"""Silent, slow and too many connections, sent over raw sockets as an attacker
would: the header timeout, the body timeout and the connection cap
(``parley/api/protocol.py``, ``parley/api/http.py``)."""

from __future__ import annotations

import json
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from parley.api.protocol import FD_RESERVE, fit_cap
from tests.conftest import Server, wait_for

GUARD = 60.0  # seconds a test waits for the server before failing (never expected)
BODY = b'{"model":"scripted","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=GUARD)
    return sock


def request(body: bytes = BODY, *, length: int | None = None) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: parley\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (len(body) if length is None else length)
    ) + body


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(1 << 16):
        received += chunk
    return received


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response (status, body) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(1 << 16)
        assert chunk
        body += chunk
    return int(head.split()[1]), body


def served(server: Server) -> bool:
    response = httpx.post(
        server.url + "/v1/messages",
        content=BODY,
        headers={"content-type": "application/json"},
        timeout=GUARD,
    )
    return response.status_code == 200 and response.json()["stop_reason"] == "end_turn"


@pytest.fixture(scope="module")
def impatient(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--engine", "scripted", "--header-timeout", "1", "--body-timeout", "1")


def test_silent_and_half_sent_requests_are_closed_after_the_header_timeout(
    impatient: Server,
) -> None:
    silent = connect(impatient)
    half = connect(impatient)
    half.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: parley\r\ncontent-")
    # A kept-alive connection: its first request is served, the second never finishes.
    kept = connect(impatient)
    kept.sendall(request())
    assert read_response(kept)[0] == 200
    kept.sendall(b"GET /v1/models HTTP/1.1\r\n")
    for sock in (silent, half, kept):
        with sock:
            assert read_to_end(sock) == b""  # closed by the server, nothing answered
    assert impatient.log().count("connection closed: request headers incomplete") >= 3
    assert served(impatient)


def test_a_stalled_body_is_answered_408_and_closed(impatient: Server) -> None:
    with connect(impatient) as sock:
        sock.sendall(request(b'{"model": "scripted", ', length=len(BODY)))
        response = read_to_end(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), response
    assert b"connection: close" in head
    envelope = json.loads(body)
    assert envelope["type"] == "error"
    assert envelope["request_id"].startswith("req_")
    assert envelope["error"]["type"] == "timeout_error"
    assert "the request body did not arrive in time: 22 of 79 bytes" in envelope["error"]["message"]
    assert served(impatient)


def test_a_body_trickling_below_the_minimum_rate_is_answered_408(impatient: Server) -> None:
    # A byte every 0.2 s never leaves the body a second without data, but its
    # average rate is far below 64 KB/s: it is cut off, not waited for.
    before = impatient.log().count("status=408")
    response: bytes | None = None
    try:
        with connect(impatient) as sock:
            sock.sendall(request(b"", length=100_000))
            answered = False
            for _ in range(int(GUARD / 0.2)):
                readable, _, _ = select.select([sock], [], [], 0.2)  # paces the trickle
                if readable:
                    answered = True
                    break
                sock.sendall(b" ")
            assert answered
            response = read_to_end(sock)
    except (ConnectionResetError, BrokenPipeError):
        # A byte trickled in after the server had answered and closed: the kernel
        # resets the connection and may drop the 408 before it is read. What the
        # server answered is then in its access log.
        wait_for(lambda: impatient.log().count("status=408") > before, "the 408 logged")
    if response is not None:
        assert response.startswith(b"HTTP/1.1 408 "), response
        assert b"64 KB/s on average" in response
    assert served(impatient)


def hold(sock: socket.socket) -> None:
    """Keep a served connection open: a next request that never finishes (the
    header timeout is long in this test, uvicorn's keep-alive timer stops)."""
    sock.sendall(b"GET / HTTP/1.1\r\n")


def test_connections_past_the_cap_are_refused_and_the_others_served(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(
        "--engine", "scripted", "--max-connections", "20", "--header-timeout", "300"
    )
    # Served first, so the server has heard the start-up probe's connection close
    # before it counts ours: from here on it holds exactly the ones this test opens.
    first = connect(server)
    first.sendall(request())
    assert read_response(first)[0] == 200
    hold(first)
    idle = [connect(server) for _ in range(18)]
    # Below the cap a client is served while the others sit idle.
    last = connect(server)
    last.sendall(request())
    assert read_response(last)[0] == 200
    hold(last)
    # At the cap (20 open): a new connection gets a 529 in the Anthropic envelope at once.
    with connect(server) as refused:
        response = read_to_end(refused)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 529 "), response
    assert b"retry-after: 1" in head
    envelope = json.loads(body)
    assert envelope["error"]["type"] == "overloaded_error"
    assert envelope["request_id"].startswith("req_")
    # The connections already open are not disturbed.
    idle[0].sendall(request())
    assert read_response(idle[0])[0] == 200
    for sock in [first, *idle, last]:
        sock.close()
    # Once they are gone (the server hears of it shortly), clients are served again.
    deadline = time.monotonic() + GUARD
    while not served_or_refused(server):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "connection cap reached" in server.log()
    assert "accepting connections again" in server.log()


def served_or_refused(server: Server) -> bool:
    """True when served; False when refused with 529 (any other answer fails)."""
    response = httpx.post(
        server.url + "/v1/messages",
        content=BODY,
        headers={"content-type": "application/json"},
        timeout=GUARD,
    )
    assert response.status_code in (200, 529), response.text
    return response.status_code == 200


def test_the_cap_fits_the_open_files_limit() -> None:
    assert fit_cap(1000, 20_000) == 1000
    assert fit_cap(1000, 1024) == 1024 - FD_RESERVE
    assert fit_cap(1000, resource.RLIM_INFINITY) == 1000
    # Started with a low soft limit, parley raises it to what the cap needs when
    # the hard limit allows, and lowers the cap when it does not.
    probe = (
        "import resource, sys\n"
        "from parley.api.protocol import connection_cap\n"
        "soft, hard = int(sys.argv[1]), int(sys.argv[2])\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "print(connection_cap(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )

    def run(soft: int, hard: int) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(soft), str(hard)],
            capture_output=True,
            text=True,
            check=True,
            timeout=GUARD,
        )
        return [int(x) for x in out.stdout.split()]

    assert run(256, 2000) == [1000, 1000 + FD_RESERVE]
    assert run(256, 256) == [256 - FD_RESERVE, 256]

"""Documents given by URL: off by default, SSRF-guarded and bounded when enabled.

Every origin is a local HTTP server on 127.0.0.1 (allow-listed where a test
fetches): ``origin`` serves fixed documents, ``Dribbler`` sends its headers
a byte at a time and notes which fetches connect and when they close.
"""

from __future__ import annotations

import http.server
import json
import re
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RULES, Server

DOC = "The parley test document says: blue whales sing."
GUARD = 30  # seconds: a failure guard, never a measurement
HITS: list[str] = []  # paths the origin was asked for


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        HITS.append(self.path)
        if self.path == "/doc.txt":
            body, kind = DOC.encode(), "text/plain; charset=utf-8"
        elif self.path == "/big.txt":
            body, kind = b"x" * 5000, "text/plain"
        elif self.path == "/image.png":
            body, kind = b"\x89PNG....", "image/png"
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        else:
            self.send_error(404)
            return
        self._send(200, body, kind)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def body_for(*urls: str) -> dict[str, Any]:
    documents = [{"type": "document", "source": {"type": "url", "url": url}} for url in urls]
    return {
        "model": "scripted",
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": [*documents, {"type": "text", "text": "Summarise."}]}
        ],
    }


def ask(server: Server, *urls: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/messages", json=body_for(*urls), headers={"x-api-key": "k"}, timeout=60
    )


def test_off_by_default(scripted_server: Server, origin: str) -> None:
    response = ask(scripted_server, f"{origin}/doc.txt")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("messages.0.content.0.source.url: URL sources are disabled")


def test_private_addresses_are_refused(server_factory: Callable[..., Server], origin: str) -> None:
    server = server_factory("--engine", "scripted", "--script", str(RULES), "--allow-url-sources")
    for url in (f"{origin}/doc.txt", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/"):
        response = ask(server, url)
        assert response.status_code == 400, url
        assert "private, loopback or link-local" in response.json()["error"]["message"]
    assert ask(server, "file:///etc/passwd").status_code == 400


def test_allow_listed_fetches_within_limits(
    server_factory: Callable[..., Server], origin: str
) -> None:
    server = server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--allow-url-sources",
        "--url-allow",
        "127.0.0.1",
        env={"PARLEY_URL_MAX_BYTES": "1000"},
    )
    fetched = ask(server, f"{origin}/doc.txt")
    assert fetched.status_code == 200, fetched.text
    assert DOC in fetched.json()["content"][0]["text"]  # the scripted engine echoes the prompt
    too_big = ask(server, f"{origin}/big.txt")
    assert too_big.status_code == 400 and "larger than 1000 bytes" in too_big.text
    image = ask(server, f"{origin}/image.png")
    assert image.status_code == 400 and "not a text document" in image.text
    # A redirect is checked again: an allowed host cannot bounce to a private one.
    bounced = ask(server, f"{origin}/to-metadata")
    assert bounced.status_code == 400 and "169.254.169.254" in bounced.text


class Dribbler:
    """An origin that answers every fetch with ``200`` and then one header byte
    every 0.1 s, for ever. It notes each fetch's path when its request arrives,
    and counts the connections still open."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.url = f"{self.base}/slow.txt"
        self.paths: list[str] = []
        self.open = 0
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def wait_for(self, predicate: Callable[[Dribbler], bool]) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout=GUARD)

    def close(self) -> None:
        """Stop listening (``shutdown`` wakes the thread blocked in ``accept``)."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.changed:
                self.open += 1
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        request = b""
        with conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-slow: ")
            while True:
                # The pace of the dribble; not how the test waits (it waits on events).
                readable, _, _ = select.select([conn], [], [], 0.1)
                try:
                    if readable:
                        data = conn.recv(65536)
                        if not data:  # the fetcher closed the connection
                            break
                        seen, request = b"\r\n" in request, request + data
                        if not seen and b"\r\n" in request:  # its request line: note the path
                            with self.changed:
                                self.paths.append(request.split(b" ")[1].decode())
                                self.changed.notify_all()
                        continue
                    conn.sendall(b"a")
                except OSError:  # reset by the fetcher
                    break
        with self.changed:
            self.open -= 1
            self.changed.notify_all()


@pytest.fixture
def slow() -> Iterator[Dribbler]:
    dribbler = Dribbler()
    yield dribbler
    dribbler.close()


def all_closed(slow: Dribbler) -> bool:
    return bool(slow.paths) and slow.open == 0


@pytest.fixture(scope="module")
def bounded(server_factory: Callable[..., Server]) -> Server:
    """URL sources on, 127.0.0.1 allowed, small limits."""
    return server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--allow-url-sources",
        "--url-allow",
        "127.0.0.1",
        env={"PARLEY_URL_TIMEOUT": "2", "PARLEY_URL_MAX_TOTAL_BYTES": "8000"},
    )


def assert_fetches_normally(server: Server, origin: str) -> None:
    fetched = ask(server, f"{origin}/doc.txt")
    assert fetched.status_code == 200, fetched.text
    assert DOC in fetched.json()["content"][0]["text"]


def test_at_most_20_documents_a_request(bounded: Server, origin: str) -> None:
    before = len(HITS)
    response = ask(bounded, *[f"{origin}/doc.txt"] * 21)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        "messages.0.content.20.source.url: a request may give at most 20 documents by URL; "
        "this one gives 21"
    )
    assert len(HITS) == before  # refused before fetching any
    twenty = ask(bounded, *[f"{origin}/doc.txt"] * 20)
    assert twenty.status_code == 200, twenty.text
    assert len(HITS) == before + 20


def test_total_bytes_a_request(bounded: Server, origin: str) -> None:
    # 5,000 bytes each, under the 10 MB per document; 8,000 together at most.
    response = ask(bounded, f"{origin}/big.txt", f"{origin}/big.txt")
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert re.fullmatch(
        r"messages\.0\.content\.[01]\.source\.url: with the document at \S+/big\.txt, this "
        r"request's URL documents come to more than 8000 bytes together, the limit of one "
        r"request",
        message,
    ), message
    assert ask(bounded, f"{origin}/big.txt").status_code == 200  # one fits
    assert_fetches_normally(bounded, origin)


def test_fetches_of_a_request_run_four_at_a_time(bounded: Server, slow: Dribbler) -> None:
    """Eight documents whose servers never finish: four are fetched at once, the
    rest wait their turn, and the first to fail ends them all (none starts)."""
    response = ask(bounded, *[f"{slow.base}/{i}" for i in range(8)])
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert re.fullmatch(
        r"messages\.0\.content\.[0-3]\.source\.url: fetching \S+ took longer than 2 s", message
    ), message
    assert slow.wait_for(all_closed)
    assert sorted(slow.paths) == ["/0", "/1", "/2", "/3"]


def test_a_fetch_has_one_deadline_however_its_server_dribbles(
    bounded: Server, origin: str, slow: Dribbler
) -> None:
    response = ask(bounded, slow.url)  # httpx's per-read timeout alone never fired
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        f"messages.0.content.0.source.url: fetching {slow.url} took longer than 2 s"
    )
    assert slow.wait_for(all_closed)
    assert_fetches_normally(bounded, origin)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_client_that_leaves_stops_its_fetch(
    server_factory: Callable[..., Server], origin: str, path: str, slow: Dribbler
) -> None:
    server = server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--allow-url-sources",
        "--url-allow",
        "127.0.0.1",
        env={"PARLEY_URL_TIMEOUT": "600"},  # the deadline is not what ends it here
    )
    body = body_for(slow.url)
    if path.endswith("count_tokens"):
        del body["max_tokens"]
    payload = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=GUARD) as client:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"x-api-key: k\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        assert slow.wait_for(lambda d: d.paths == ["/slow.txt"])  # the fetch is under way
    # The client is gone: the server's fetch connection closes with it.
    assert slow.wait_for(all_closed), "the fetch went on after its client left"
    assert_fetches_normally(server, origin)

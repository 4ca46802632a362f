"""Documents given by URL: off by default, SSRF-guarded and bounded when enabled."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RULES, Server

DOC = "The parley test document says: blue whales sing."


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
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
        self.send_response(200)
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


def ask(server: Server, url: str) -> httpx.Response:
    body = {
        "model": "scripted",
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": url}},
                    {"type": "text", "text": "Summarise."},
                ],
            }
        ],
    }
    return httpx.post(
        f"{server.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=60
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

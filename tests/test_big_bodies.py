"""Big request bodies: parsed off the event loop, and a prompt that cannot fit
refused without tokenizing it whole (``parley/offload.py``, the engines'
``prepare(..., limit=)``)."""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parley.conversation import Conversation, TextPart, Turn
from parley.engines import scripted
from parley.engines.scripted import Script, ScriptedEngine
from parley.errors import PromptTooLongError
from tests.conftest import MODEL, Server

GUARD = 120.0  # seconds before a test gives up on the server (never expected)
SMALL = {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def many_blocks(n_messages: int) -> bytes:
    """A body that is costly to parse and build: many small messages and blocks
    (10 MB for 40,000 messages: seconds of validating and building)."""
    messages = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": [{"type": "text", "text": "x" * 100}, {"type": "text", "text": "y" * 100}],
        }
        for i in range(n_messages + 1)
    ]
    return json.dumps({"model": "scripted", "max_tokens": 5, "messages": messages}).encode()


def unsent(sock: socket.socket) -> int:
    """Bytes this socket has not yet handed to the peer's kernel (Linux ``SIOCOUTQ``)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    count: int = struct.unpack("i", raw)[0]
    return count


def read_status(sock: socket.socket) -> int:
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(1 << 16)
        assert chunk, received
        received += chunk
    return int(received.split()[1])


def test_a_small_request_is_answered_while_big_bodies_are_parsed(scripted_server: Server) -> None:
    body = many_blocks(40_000)
    host, port = scripted_server.url.removeprefix("http://").split(":")
    finished: list[str] = []
    lock = threading.Lock()
    socks = [socket.create_connection((host, int(port)), timeout=GUARD) for _ in range(4)]
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: parley\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()

    def big(sock: socket.socket) -> None:
        sock.sendall(head + body)
        status = read_status(sock)
        with lock:
            finished.append(f"big {status}")

    threads = [threading.Thread(target=big, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    # Wait until every big body has reached the server, so it is reading or
    # parsing all of them when the small request arrives.
    deadline = time.monotonic() + GUARD
    while any(unsent(sock) for sock in socks):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    small = httpx.post(scripted_server.url + "/v1/messages", json=SMALL, timeout=GUARD)
    with lock:
        finished.append(f"small {small.status_code}")
    for thread in threads:
        thread.join(GUARD)
    for sock in socks:
        sock.close()
    # The small request did not wait behind the big ones: it was answered while
    # they were still being parsed. (One big body may be parsed whole before the
    # small request is even sent, on an idle machine: ordering past that is the
    # machine's, not parley's.)
    assert sorted(finished) == ["big 200"] * 4 + ["small 200"], finished
    assert finished.index("small 200") < 3, finished


def huge_words() -> str:
    return "word " * 6_000_000  # 30 MB: 6 million tokens for the scripted engine


def test_a_30mb_prompt_is_refused_without_tokenizing_it_whole(scripted_server: Server) -> None:
    body = {**SMALL, "messages": [{"role": "user", "content": huge_words()}]}
    response = httpx.post(scripted_server.url + "/v1/messages", json=body, timeout=GUARD)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    # The message the full count gives, with the bound the early refusal counted.
    assert error["message"].startswith("prompt is too long: 200000 tokens > 199999 maximum")
    assert "counted without tokenizing it whole" in error["message"]
    assert "the context window of scripted is 200000 tokens" in error["message"]
    assert httpx.post(scripted_server.url + "/v1/messages", json=SMALL).status_code == 200


def test_big_bodies_count_as_small_ones_do(scripted_server: Server) -> None:
    """The off-loop path (a body past 256 KB) gives the exact count, and usage
    equals count_tokens as on the inline path."""
    messages = [{"role": "user", "content": "word " * 60_000}]
    body = {**SMALL, "messages": messages}
    url = scripted_server.url + "/v1/messages"
    counted = httpx.post(
        url + "/count_tokens", json={"model": "scripted", "messages": messages}, timeout=GUARD
    )
    assert counted.status_code == 200, counted.text
    created = httpx.post(url, json=body, timeout=GUARD)
    assert created.status_code == 200, created.text
    assert created.json()["usage"]["input_tokens"] == counted.json()["input_tokens"] > 60_000


def conversation(text: str) -> Conversation:
    return Conversation(system=None, turns=(Turn("user", (TextPart(text),)),))


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The lengths of the texts the scripted engine tokenizes whole."""
    seen: list[int] = []
    whole = scripted.tokenize

    def tokenize(text: str) -> list[str]:
        seen.append(len(text))
        return whole(text)

    monkeypatch.setattr(scripted, "tokenize", tokenize)
    yield seen


def test_the_scripted_precheck_refuses_exactly_what_cannot_fit(counting: list[int]) -> None:
    engine = ScriptedEngine(Script(), context_length=1000)
    fits = engine.prepare(conversation("word " * 500))
    n = fits.n_tokens
    assert engine.prepare(conversation("word " * 500), limit=n + 1).n_tokens == n
    with pytest.raises(PromptTooLongError) as caught:
        engine.prepare(conversation("word " * 500), limit=n)
    assert (caught.value.tokens, caught.value.exact) == (n, False)
    # A huge prompt is counted only up to the limit, never tokenized whole.
    counting.clear()
    with pytest.raises(PromptTooLongError):
        engine.prepare(conversation(huge_words()), limit=1000)
    assert counting == []
    # Without a limit (count_tokens) the count stays exact.
    assert engine.prepare(conversation("word " * 5000)).n_tokens > 1000


@pytest.mark.model
def test_a_30mb_prompt_on_the_model_is_refused_before_tokenizing(embedded_server: Server) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": huge_words()}],
    }
    response = httpx.post(embedded_server.url + "/v1/messages", json=body, timeout=GUARD)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("prompt is too long: ")
    assert "> 8191 maximum (a lower bound" in message
    assert "counted without tokenizing it whole" in message
    small = {**body, "messages": [{"role": "user", "content": "Say hi."}]}
    assert httpx.post(embedded_server.url + "/v1/messages", json=small, timeout=GUARD).is_success


@pytest.mark.model
def test_the_model_bound_is_below_every_exact_count() -> None:
    """The proof's premise on the real vocabulary: no text has fewer tokens than
    its length over the longest token, whatever it is made of."""
    from parley.engines.llamacpp import embedded_model_path
    from parley.engines.llamacpp.native import LlamaNative, NativeConfig

    native = LlamaNative(
        embedded_model_path(), NativeConfig(n_ctx=256, n_seq_max=1, n_batch=64, n_threads=1)
    )
    try:
        longest = native.longest_token_bytes()
        assert longest is not None and longest >= 4
        texts = [
            "\n" + " " * 80,  # the longest piece of SmolLM2's vocabulary, repeated below
            ("\n" + " " * 80) * 50,
            " " * 5000,
            "-" * 5000,
            "é€😀" * 500,
            "<|im_start|>user\nhi<|im_end|>\n" * 100,
            Path(__file__).read_text(),
        ]
        for text in texts:
            for special in (False, True):
                tokens = native.tokenize(text, add_bos=False, special=special)
                assert len(tokens) >= -(-len(text) // longest), (text[:40], special)
    finally:
        native.close()

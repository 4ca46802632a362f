"""The access log: one ``parley.access`` line per request saying what happened
(model, stream, status, tokens, timings, the error of a 4xx), never prompt
text, no ANSI escapes, and a client that left logged as a disconnect
(``parley/api/middleware.py``, ``parley/logs.py``)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import Gate, Server, wait_for, write_rules

SECRET = "zebra-quartz-prompt-words"  # prompt text that must never reach the log
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    return Gate(tmp_path_factory.mktemp("gate") / "open")


@pytest.fixture(scope="module")
def server(
    server_factory: Callable[..., Server], gate: Gate, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    rules = write_rules(
        gate.path.parent / "rules.yaml",
        [
            {
                "match": {"user": "^hold forever", "regex": True},
                "reply": {"text": "never sent", "hold": "open"},
            },
            {
                "match": {"user": "^hold midway", "regex": True},
                "reply": {"text": "one two three", "hold": "open", "hold_after": 1},
            },
            {
                "match": {"user": "^fail midway", "regex": True},
                "reply": {"text": "partial output", "error": "scripted failure"},
            },
            {"match": {"user": ".*", "regex": True}, "reply": {"text": "one two three four"}},
        ],
        slots=4,
    )
    return server_factory(
        "--engine", "scripted", "--script", str(rules), "--engine-opt", "context_length=1000"
    )  # fmt: skip


def access_line(server: Server, request_id: str) -> dict[str, str]:
    """The fields of the access line of ``request_id`` (waits for it: the line
    is written once the response has ended)."""

    def find() -> dict[str, str] | None:
        for line in server.log().splitlines():
            if " parley.access: " in line and f"request_id={request_id}" in line:
                fields = {
                    k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD.findall(line)
                }
                fields["event"] = line.split(" parley.access: ", 1)[1].split(" request_id=")[0]
                return fields
        return None

    return wait_for(find, f"the access line of {request_id}")


def ask(text: str, **extra: object) -> dict[str, object]:
    return {
        "model": "scripted",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"{text} {SECRET}"}],
        **extra,
    }


def test_a_message_is_logged_with_model_usage_and_timings(server: Server) -> None:
    message = server.client().messages.create(**ask("hello"))  # type: ignore[arg-type]
    line = access_line(server, message._request_id or "")
    assert line["event"] == "request"
    assert line["method"] == "POST" and line["path"] == "/v1/messages"
    assert line["status"] == "200" and line["model"] == "scripted" and line["stream"] == "false"
    assert int(line["input_tokens"]) == message.usage.input_tokens
    assert int(line["output_tokens"]) == message.usage.output_tokens
    assert line["cache_read"] == "0" and line["cache_creation"] == "0"
    assert line["stop_reason"] == "end_turn"
    assert float(line["ttft_ms"]) >= 0 and float(line["ms"]) >= float(line["ttft_ms"])
    assert float(line["tok_s"]) > 0


def test_a_stream_is_logged_as_one(server: Server) -> None:
    with server.client().messages.stream(**ask("hello")) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    line = access_line(server, request_id)
    assert line["stream"] == "true" and line["status"] == "200"
    assert int(line["output_tokens"]) == final.usage.output_tokens
    assert "ttft_ms" in line


def test_a_stream_that_fails_after_it_began_is_logged_with_its_error(server: Server) -> None:
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json=ask("fail midway", stream=True), timeout=60
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("event: ")]
        request_id = response.headers["request-id"]
    assert events[-1] == "event: error"
    line = access_line(server, request_id)
    assert line["status"] == "200" and line["event"] == "request"
    assert line["error_type"] == "api_error" and "stop_reason" not in line


def test_an_error_is_logged_with_its_type_and_message_but_no_prompt(server: Server) -> None:
    client = server.client()
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(**{**ask("hello"), "model": "no-such-model"})  # type: ignore[arg-type]
    line = access_line(server, missing.value.request_id or "")
    assert line["status"] == "404" and line["error_type"] == "not_found_error"
    assert "no-such-model" in line["error"] and "served here: scripted" in line["error"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(**ask("hello"), extra_body={"temperature": 7})  # type: ignore[arg-type]
    line = access_line(server, bad.value.request_id or "")
    assert line["status"] == "400" and line["error_type"] == "invalid_request_error"
    assert "temperature" in line["error"]
    assert SECRET not in server.log()


def test_a_prompt_too_long_is_logged_with_a_hint_of_n_ctx(server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as long:
        server.client().messages.create(**ask("word " * 2000))  # type: ignore[arg-type]
    assert "prompt is too long" in str(long.value)
    assert "--n-ctx" not in str(long.value)  # the hint is the operator's, not the client's
    line = access_line(server, long.value.request_id or "")
    assert line["error"].startswith("prompt is too long: ")
    assert "--n-ctx" in line["hint"]
    assert "word word" not in server.log()


def test_the_log_is_plain_text_under_clean_logger_names(server: Server) -> None:
    server.client().messages.create(**ask("hello"))  # type: ignore[arg-type]
    log = server.log()
    assert "\x1b" not in log and "color_message" not in log
    assert "uvicorn.error" not in log
    assert " uvicorn: " in log  # uvicorn's own start-up lines, under a plain name


@pytest.fixture
def held(server: Server, gate: Gate) -> Iterator[None]:
    yield
    gate.open()  # lets the held generations of the test end
    server.wait_idle("scripted")
    gate.path.unlink()


def send_raw(server: Server, body: dict[str, object]) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: parley\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def disconnect_lines(server: Server) -> list[str]:
    return [
        line for line in server.log().splitlines() if " parley.access: client disconnected " in line
    ]


@pytest.mark.usefixtures("held")
def test_a_client_leaving_a_held_request_is_logged_as_a_disconnect(server: Server) -> None:
    before = len(disconnect_lines(server))
    sock = send_raw(server, ask("hold forever"))
    server.wait_stats("scripted", running=1)
    sock.close()
    wait_for(lambda: len(disconnect_lines(server)) > before, "the disconnect logged")
    line = disconnect_lines(server)[-1]
    assert "status=-" in line and "status=400" not in line
    assert "model=scripted" in line and "error_type" not in line


@pytest.mark.usefixtures("held")
def test_a_client_leaving_mid_stream_is_logged_as_a_disconnect(server: Server) -> None:
    before = len(disconnect_lines(server))
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json=ask("hold midway", stream=True), timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: content_block_delta"):
                break  # the first token is out; the rest is held
    wait_for(lambda: len(disconnect_lines(server)) > before, "the disconnect logged")
    line = disconnect_lines(server)[-1]
    assert "status=200" in line and "stream=true" in line


def test_log_values_are_quoted_so_a_line_stays_one_line(tmp_path: Path) -> None:
    import logging

    from parley.logs import KeyValueFormatter

    record = logging.LogRecord("parley.x", logging.INFO, "", 0, "m", (), None)
    record.error = 'two\nlines "and" \x1b[31mred'
    record.color_message = "\x1b[32mm\x1b[0m"
    text = KeyValueFormatter().format(record)
    assert "\n" not in text and "\x1b" not in text and "color_message" not in text
    assert 'error="two\\nlines \\"and\\" \\u001b[31mred"' in text

"""A fake llama-server for fault tests: just enough of its wire format, on a real socket.

``FakeLlamaServer`` is a Starlette app served by uvicorn on 127.0.0.1 in a
background thread (``start`` / ``stop``). It answers ``/health`` (503
"Loading model" while ``loading``), ``/props``, ``/tokenize`` and a streamed ``/completion``
in the shapes the real llama-server sends (checked against the build
``scripts/install test`` installs):

* chunks ``data: {"index": 0, "content": " help", "tokens": [724], "stop": false, ...}``,
  the end of generation as a chunk of its own (``"content": "", "tokens": [2]``),
  then a last chunk with ``"stop": true``, ``"tokens": []``, ``stop_type``
  ``"eos"`` / ``"limit"`` / ``"word"``, ``timings`` and ``tokens_cached``;
* errors as ``{"error": {"code": 400, "message": ..., "type": ...}}``;
  a prompt longer than the context is a 400 ``exceed_context_size_error``
  with ``n_prompt_tokens`` and ``n_ctx``; a failure mid-stream is one
  ``data: {"error": {...}}`` line that ends the stream.

Token ids are the embedded GGUF's own, so parley decodes them as it would
the real server's. Each ``/completion`` takes the next behaviour a test
scripted (``script``), else a normal ``Answer``. The fake counts the
``/completion`` requests in flight (up at entry, down in ``finally``), as
llama-server's busy slots would show them: a test waits for 0 to prove
parley closed what it gave up on. Like llama-server, a handler that is
holding a request notices the client leaving (``http.disconnect``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.conftest import wait_for

ANSWER = "Hello! How can I help you today?"


@dataclass(frozen=True)
class Answer:
    """A normal answer: ``text`` token by token, then its end (the end of
    generation, or a stop word), cut at ``n_predict`` (``stop_type`` "limit")."""

    text: str = ANSWER
    end: Literal["eos", "word"] = "eos"


@dataclass(frozen=True)
class Refuse:
    """An error status before any chunk, with llama-server's error body."""

    status: int
    message: str = "refused"
    type: str = "server_error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContextExceeded:
    """llama-server's 400 for a prompt that does not fit its context of ``n_ctx``."""

    n_ctx: int


@dataclass(frozen=True)
class Drop:
    """``after`` chunks of the answer, then the connection is dropped."""

    after: int


@dataclass(frozen=True)
class Cut:
    """``after`` chunks, then the stream ends cleanly but without its last chunk."""

    after: int


@dataclass(frozen=True)
class Hang:
    """``after`` chunks (0: not even the headers), then nothing until the client leaves."""

    after: int


@dataclass(frozen=True)
class Garble:
    """``after`` chunks, then ``line`` (not a chunk), then nothing until the client leaves."""

    after: int
    line: str = "data: {not json"


@dataclass(frozen=True)
class Fail:
    """``after`` chunks, then llama-server's error chunk, which ends the stream."""

    after: int
    message: str = "failed to decode the batch"


Behaviour = Answer | Refuse | ContextExceeded | Drop | Cut | Hang | Garble | Fail


class DropConnection(Exception):
    """Raised by a handler to have uvicorn drop the connection mid-response."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


class FakeLlamaServer:
    def __init__(self, gguf: Path, *, n_ctx: int = 2048, slots: int = 2, port: int = 0) -> None:
        from parley.engines.llamacpp.vocab import LlamaVocab

        vocab = LlamaVocab(gguf)
        try:
            self._eos = vocab.eos
            self._chat_template = vocab.chat_template() or ""
            self._pieces: dict[int, str] = {}
            self._vocab = vocab
            self._tokens: dict[str, list[int]] = {}
            self.tokens(ANSWER)
        except BaseException:
            vocab.close()
            raise
        self.gguf = gguf
        self.n_ctx = n_ctx
        self.slots = slots
        self.port = port
        self.loading = False  # /health answers 503 "Loading model" meanwhile
        self.in_flight = 0  # /completion requests being answered
        self.requests = 0  # /completion requests received
        self.health_checks = 0
        self.bodies: list[dict[str, Any]] = []
        self._script: collections.deque[Behaviour] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        # Known before ``start`` when the port is given (a parley started first).
        self.url = f"http://127.0.0.1:{port}" if port else ""

    # --- the test's side ---------------------------------------------------------

    def tokens(self, text: str) -> list[int]:
        """``text``'s token ids in the GGUF's vocabulary (the answer's ids)."""
        if text not in self._tokens:
            ids = self._vocab.tokenize(text, add_bos=False, special=False)
            for token in ids:
                self._pieces[token] = self._vocab.piece(token).decode("utf-8")
            self._tokens[text] = ids
        return self._tokens[text]

    def piece(self, token: int) -> str:
        """The text of one of ``tokens``' ids."""
        return self._pieces[token]

    def script(self, *behaviours: Behaviour) -> None:
        """What the next ``/completion`` requests do, in order (then: ``Answer``)."""
        self._script.extend(behaviours)

    def reset(self) -> None:
        self._script.clear()
        self.bodies.clear()
        self.requests = 0
        self.loading = False

    def start(self) -> FakeLlamaServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]  # a restart listens on the same port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self._app(), log_config=None, access_log=False, ws="none", lifespan="on"
        )
        self._server = server = uvicorn.Server(config)
        self._socket = sock
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-llama-server", daemon=True
        )
        self._thread.start()
        wait_for(lambda: server.started or not self._thread_alive(), "the fake to listen")
        assert server.started, "the fake llama-server did not start"
        return self

    def stop(self) -> None:
        """Stop listening; requests still held are let go (they end at once)."""
        if self._server is None:
            return
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(30)
        assert not self._thread.is_alive(), "the fake llama-server did not stop"
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._loop = self._released = None

    def close(self) -> None:
        self.stop()
        self._vocab.close()

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the server's side (on its own event loop) -------------------------------

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._released = asyncio.Event()  # set only by ``stop``
            yield

        errors = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietDrops) for f in errors.filters):
            errors.addFilter(_QuietDrops())
        return Starlette(
            routes=[
                Route("/health", self._health),
                Route("/props", self._props),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                Route("/completion", _Completion(self), methods=["POST"]),
            ],
            lifespan=lifespan,
        )

    async def _health(self, request: Request) -> JSONResponse:
        self.health_checks += 1
        if self.loading:
            return _error(503, "Loading model", "unavailable_error")
        return JSONResponse({"status": "ok"})

    async def _props(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "default_generation_settings": {"params": {}, "n_ctx": self.n_ctx},
                "total_slots": self.slots,
                "model_alias": str(self.gguf),
                "model_path": str(self.gguf),
                "chat_template": self._chat_template,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "build_info": "b0-fake",
                "is_sleeping": False,
            }
        )

    async def _tokenize(self, request: Request) -> JSONResponse:
        body = await request.json()
        ids = self._vocab.tokenize(
            body["content"],
            add_bos=bool(body.get("add_special", False)),
            special=bool(body.get("parse_special", True)),
        )
        return JSONResponse({"tokens": ids})

    def _next(self) -> Behaviour:
        return self._script.popleft() if self._script else Answer()

    async def serve_completion(self, receive: Receive, send: Send) -> None:
        self.requests += 1
        self.in_flight += 1
        try:
            body = json.loads(await _read_body(receive))
            self.bodies.append(body)
            await self._complete(self._next(), body, receive, send)
        finally:
            self.in_flight -= 1

    async def _complete(
        self, behaviour: Behaviour, body: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        prompt = body.get("prompt") or []
        if isinstance(behaviour, Refuse):
            await _send_json(
                send,
                behaviour.status,
                _error_body(behaviour.status, behaviour.message, behaviour.type),
                behaviour.headers,
            )
            return
        if isinstance(behaviour, ContextExceeded):
            n = len(prompt)
            error = _error_body(
                400,
                f"request ({n} tokens) exceeds the available context size "
                f"({behaviour.n_ctx} tokens), try increasing it",
                "exceed_context_size_error",
            )
            error["error"] |= {"n_prompt_tokens": n, "n_ctx": behaviour.n_ctx}
            await _send_json(send, 400, error, {"connection": "close"})
            return
        if isinstance(behaviour, Hang) and behaviour.after == 0:
            await self._until_gone(receive)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")],
            }
        )
        chunks = self._chunks(behaviour, body)
        if isinstance(behaviour, Drop | Cut | Hang | Garble | Fail):
            chunks = chunks[: behaviour.after]
        for chunk in chunks:
            await _send_event(send, chunk)
        if isinstance(behaviour, Drop):
            raise DropConnection
        if isinstance(behaviour, Garble):
            line = behaviour.line.encode() + b"\n\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
            await self._until_gone(receive)
            return
        if isinstance(behaviour, Hang):
            await self._until_gone(receive)
            return
        if isinstance(behaviour, Fail):
            await _send_event(send, _error_body(500, behaviour.message, "server_error"))
        await send({"type": "http.response.body", "body": b""})

    def _chunks(self, behaviour: Behaviour, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer's chunks as llama-server streams them, its last chunk included
        (with ``timings_per_token``, every chunk carries the ``timings``)."""
        answer = behaviour if isinstance(behaviour, Answer) else Answer()
        ids = [*self.tokens(answer.text), self._eos]
        stop_type: str = answer.end
        n_predict = int(body.get("n_predict", -1))
        if 0 <= n_predict < len(ids):
            ids, stop_type = ids[:n_predict], "limit"
        elif answer.end == "word":
            ids = ids[:-1]
        n_prompt = len(body.get("prompt") or [])
        every = bool(body.get("timings_per_token"))
        chunks: list[dict[str, Any]] = []
        for n, token in enumerate(ids, 1):
            content = "" if token == self._eos else self._pieces[token]
            chunk: dict[str, Any] = {
                "index": 0, "content": content, "tokens": [token], "stop": False,
                "id_slot": -1, "tokens_predicted": n, "tokens_evaluated": n_prompt,
            }  # fmt: skip
            if every:
                chunk["timings"] = self._timings(n_prompt, n)
            chunks.append(chunk)
        chunks.append(
            {
                "index": 0,
                "content": "",
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": str(self.gguf),
                "tokens_predicted": len(ids),
                "tokens_evaluated": n_prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": stop_type,
                "stopping_word": "" if stop_type != "word" else "\n",
                "tokens_cached": n_prompt + len(ids),
                "timings": self._timings(n_prompt, len(ids)),
            }
        )
        return chunks

    def _timings(self, n_prompt: int, n_predicted: int) -> dict[str, Any]:
        """llama-server's ``timings``; nothing of the prompt comes from its cache."""
        return {
            "cache_n": 0,
            "prompt_n": n_prompt,
            "prompt_ms": 1.0,
            "prompt_per_token_ms": 1.0 / max(n_prompt, 1),
            "prompt_per_second": 1000.0 * n_prompt,
            "predicted_n": n_predicted,
            "predicted_ms": 1.0,
            "predicted_per_token_ms": 1.0 / max(n_predicted, 1),
            "predicted_per_second": 1000.0 * n_predicted,
        }

    async def _until_gone(self, receive: Receive) -> None:
        """Hold the request until the client disconnects (or ``stop``): the
        asyncio.Event it waits on is set by nothing else."""
        assert self._released is not None
        released = asyncio.ensure_future(self._released.wait())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({released, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            gone.cancel()


class _Completion:
    """``POST /completion`` as a raw ASGI app, so a behaviour controls every
    byte (and can drop the connection mid-response)."""

    def __init__(self, fake: FakeLlamaServer) -> None:
        self._fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._fake.serve_completion(receive, send)


async def _read_body(receive: Receive) -> bytes:
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DropConnection
        data += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(data)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _error_body(code: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": kind}}


def _error(code: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(_error_body(code, message, kind), status_code=code)


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json; charset=utf-8")]
    raw.append((b"content-length", str(len(data)).encode()))
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def _send_event(send: Send, data: Any) -> None:
    line = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": line, "more_body": True})

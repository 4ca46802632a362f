"""A fake OpenAI-compatible upstream, one per kind, for the chat engine's contract tests.

The wire formats are recorded from the upstreams' documentation and sources
(shared upstream notes: vLLM 0.32, SGLang 0.5.23, llama-server b11434,
Ollama's OpenAI-compatible endpoint, a generic OpenAI server), not from live
servers: what each one lists at ``/v1/models``, how it counts a chat body,
and how it streams reasoning, tool calls, the matched stop and the final
usage with its cache figures. The answer is chosen by the last user text
(``SCRIPTS``); every request body is recorded in ``Fake.requests``, so a
test sees what parley sent.

It runs under uvicorn in a thread (``Fake.serve``), on a real socket, for a
parley subprocess to reach.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port, wait_for

MODELS = {
    "vllm": {"id": "Qwen/Qwen3-0.6B", "object": "model", "created": 1700000000,
             "owned_by": "vllm", "root": "Qwen/Qwen3-0.6B", "parent": None,
             "max_model_len": 8192, "permission": []},
    "sglang": {"id": "Qwen/Qwen3-0.6B", "object": "model", "created": 1700000000,
               "owned_by": "sglang", "root": "Qwen/Qwen3-0.6B", "max_model_len": 32768},
    "llamaserver": {"id": "qwen3.gguf", "object": "model", "created": 1700000000,
                    "owned_by": "llamacpp", "meta": {"n_ctx": 4096}},
    "ollama": {"id": "qwen3:0.6b", "object": "model", "created": 1700000000,
               "owned_by": "library"},
    "openai": {"id": "gpt-test", "object": "model", "created": 1700000000,
               "owned_by": "system"},
}  # fmt: skip

WEATHER = {"city": "Paris", "unit": "celsius"}


def tokens(body: dict[str, Any]) -> int:
    """The fake's tokenizer: the same count for counting and for usage."""
    rendered = json.dumps(body.get("messages")) + json.dumps(body.get("tools") or [])
    rendered += json.dumps(body.get("chat_template_kwargs") or {})
    return len(rendered) // 4 + 1


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


@dataclass
class Fake:
    kind: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seen_prompts: set[str] = field(default_factory=set)
    url: str = ""

    def bodies(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]

    def app(self) -> Starlette:
        routes = [
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]
        if self.kind == "vllm":
            routes.append(Route("/v1/chat/completions/render", self.render, methods=["POST"]))
        if self.kind == "sglang":
            routes.append(Route("/v1/tokenize", self.tokenize, methods=["POST"]))
        if self.kind == "llamaserver":
            routes.append(Route("/props", self.props))
            routes.append(Route("/v1/chat/completions/input_tokens", self.input_tokens,
                                methods=["POST"]))  # fmt: skip
        if self.kind == "ollama":
            routes.append(Route("/api/version", self.version))
        return Starlette(routes=routes)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [MODELS[self.kind]]})

    async def props(self, request: Request) -> Response:
        return JSONResponse({
            "default_generation_settings": {"n_ctx": 4096}, "total_slots": 2,
            "chat_template": "{{ messages }}", "modalities": {"vision": False},
            "chat_template_caps": {"supports_tools": True},
        })  # fmt: skip

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.12.6"})

    async def _record(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append((request.url.path, body))
        return body

    async def render(self, request: Request) -> Response:  # vLLM: the same body → token ids
        body = await self._record(request)
        return JSONResponse({"request_id": "render-1", "token_ids": list(range(tokens(body)))})

    async def tokenize(self, request: Request) -> Response:  # SGLang: messages → tokens
        body = await self._record(request)
        n = tokens(body)
        return JSONResponse({"tokens": list(range(n)), "count": n, "max_model_len": 32768})

    async def input_tokens(self, request: Request) -> Response:  # llama-server
        body = await self._record(request)
        if "too long" in last_user_text(body):
            error = {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 5000,
                     "n_ctx": 4096, "message": "the request exceeds the available context size"}  # fmt: skip
            return JSONResponse({"error": error}, status_code=400)
        return JSONResponse({"input_tokens": tokens(body), "object": "response.input_tokens"})

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        text = last_user_text(body)
        if "too long" in text and self.kind == "openai":
            error = {"message": "This model's maximum context length is 4096 tokens.",
                     "type": "invalid_request_error", "code": "context_length_exceeded"}  # fmt: skip
            return JSONResponse({"error": error}, status_code=400)
        if text.startswith("status "):
            status = int(text.split()[1])
            error = {"message": f"fake failure {status}", "type": "fake", "code": status}
            # Longer than parley waits to resend: the client is told to come back.
            return JSONResponse({"error": error}, status_code=status, headers={"retry-after": "10"})
        return StreamingResponse(self._stream(body, text), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], text: str) -> AsyncIterator[bytes]:
        kind = self.kind
        produced = 0
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": MODELS[kind]["id"]}  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            nonlocal produced
            produced += 1 if any(v for k, v in delta.items() if k != "role") else 0
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return (
                b"data: "
                + json.dumps({**base, "choices": [{**choice, **extra}]}).encode()
                + b"\n\n"
            )

        yield chunk({"role": "assistant", "content": ""})
        finish, extra = "stop", {}
        if "think" in text:
            field_name = "reasoning" if kind in ("vllm", "ollama") else "reasoning_content"
            for piece in ["Let me", " think."]:
                yield chunk({field_name: piece})
            yield chunk({"content": "Sure."})
        elif "tool" in text:
            calls = [WEATHER, {"city": "Rome", "unit": "celsius"}] if "two" in text else [WEATHER]
            if "bad" in text:
                calls = [{"city": 5}]
            for index, arguments in enumerate(calls):
                raw = json.dumps(arguments)
                head = {"index": index, "id": f"call_{index}", "type": "function"}
                if kind == "ollama":  # Ollama sends a call whole
                    yield chunk({"tool_calls": [{**head, "function": {"name": "get_weather",
                                                                      "arguments": raw}}]})  # fmt: skip
                    continue
                yield chunk({"tool_calls": [{**head, "function": {"name": "get_weather",
                                                                  "arguments": ""}}]})  # fmt: skip
                for piece in (raw[:10], raw[10:]):
                    yield chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    )
            finish = "tool_calls"
        elif "count" in text:
            stops = body.get("stop") or []
            for word in ["one", " two", " three", " four", " five"]:
                if word.strip() in stops:  # an upstream told the stops ends there
                    extra = {"stop_reason": word.strip()} if kind == "vllm" else {}
                    extra = {"matched_stop": word.strip()} if kind == "sglang" else extra
                    break
                yield chunk({"content": word})
        elif "fail midway" in text:  # vLLM sends an error chunk inside the 200 stream
            yield chunk({"content": "Hel"})
            error = {"message": "engine dead", "type": "InternalServerError", "code": 500}
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
            return
        elif "long" in text:
            for _ in range(body["max_tokens"]):
                yield chunk({"content": " la"})
            finish = "length"
        else:
            for word in ["Hello", " there", "."]:
                yield chunk({"content": word})
        yield chunk({}, finish, **extra)
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = tokens(body)
            usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": produced,
                                     "total_tokens": prompt + produced}  # fmt: skip
            key = json.dumps(body["messages"])  # a repeated prompt is cached
            cached = prompt // 2 if key in self.seen_prompts else 0
            self.seen_prompts.add(key)
            if kind == "vllm":  # --enable-prompt-tokens-details
                created = 0 if cached else prompt // 2
                usage["prompt_tokens_details"] = {"cached_tokens": cached,
                                                  "created_cache_tokens": created}  # fmt: skip
            elif kind in ("sglang", "llamaserver", "openai"):
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    @contextlib.contextmanager
    def serve(self) -> Iterator[Fake]:
        """Serve on a free port in a thread until the block ends."""
        port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off")  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, "the fake upstream to start", timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            server.should_exit = True
            thread.join(timeout=10)

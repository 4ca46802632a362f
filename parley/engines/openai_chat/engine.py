"""The chat-mode upstream engine: any OpenAI-compatible ``/v1/chat/completions``.

At start it reads the upstream's ``/v1/models`` (waiting up to
``startup_timeout`` for an upstream still loading; the model to serve, vLLM's
and SGLang's ``max_model_len``) and finds its kind (``dialects.detect``:
llama-server answers ``/props``, Ollama ``/api/version``) unless the option
``kind`` says it. ``prepare`` builds the chat body (``request.chat_body``)
and counts it where the upstream can render it (vLLM's render endpoint,
SGLang's ``/v1/tokenize``, llama-server's ``input_tokens``: the same body,
so ``count_tokens`` is what the generation's usage says), else estimates
(documented: about four characters a token). A generation is one task on
the event loop streaming the completion through ``reply.Reply``; leaving it
(client gone, stop sequence matched by parley, a second call when one was
allowed) closes the upstream request. HTTP goes through ``client.ChatClient``
(the upstreams' shared failure rules and retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from parley.conversation import Capabilities, Conversation
from parley.engines.admission import Slots
from parley.engines.base import (
    CacheUsage,
    Engine,
    Finished,
    Generation,
    ModelCard,
    Prompt,
    SamplingParams,
    out_of_budget,
)
from parley.engines.openai_chat.client import ChatClient
from parley.engines.openai_chat.dialects import DIALECTS, KINDS, Dialect, Kind, count_of, detect
from parley.engines.openai_chat.reply import Reply
from parley.engines.openai_chat.request import Body, chat_body, sampling
from parley.engines.upstream.generation import TaskGeneration
from parley.engines.upstream.options import UpstreamOptions, read_options
from parley.errors import EngineError, OverloadedError, ParleyError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.openai")

CHARS_PER_TOKEN = 4  # the estimate where the upstream cannot count
START_POLL = 0.25  # s between looks at an upstream that is not up yet


@dataclass(frozen=True)
class ChatPrompt(Prompt):
    """A prompt as the upstream will render it: the chat body, counted."""

    body: Body = field(default_factory=dict)
    exact: bool = True  # counted by the upstream (else estimated)


class OpenAIChatEngine(Engine):
    def __init__(self, client: ChatClient, options: OpenAIChatOptions) -> None:
        self._client = client
        self._options = options
        self.url = client.url
        self.dialect: Dialect = DIALECTS[options.kind or "openai"]
        self._model = options.model or ""
        self._call_prefix = options.forced_call_prefix or ""
        self._slots = Slots(
            options.concurrency or 16, max_queue=options.max_queue, timeout=options.queue_timeout
        )
        # miscounted: answers whose usage.prompt_tokens differed from the exact count.
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "miscounted": 0}
        self.card = self._card(
            options.context_length or 4096, Capabilities(tools=True, structured_outputs=True)
        )

    def _card(self, context: int, capabilities: Capabilities) -> ModelCard:
        name = self._options.model_name or self._model or "openai-upstream"
        return ModelCard(
            id=name,
            display_name=f"{self._model or name} ({self.dialect.kind} upstream)",
            created_at="2024-01-01T00:00:00Z",
            context_length=context,
            max_output_tokens=context,
            capabilities=capabilities,
        )

    async def start(self) -> None:
        models = await self._models()
        props = await self._client.probe("/props")
        version = None
        if self._options.kind is None and props is None:
            version = await self._client.probe("/api/version")
        kind = self._options.kind or detect(models, props, version is not None)
        self.dialect = DIALECTS[kind]
        listed = [m for m in models.get("data") or [] if isinstance(m, dict)]
        if not self._model:
            if not listed:
                raise UpstreamStartError(
                    f"{self.url}/v1/models lists no model: give one with --engine-opt model=NAME"
                )
            self._model = str(listed[0].get("id"))
        served = next((m for m in listed if m.get("id") == self._model), {})
        context = self._options.context_length or _context_of(served, props) or 4096
        template_caps = (props or {}).get("chat_template_caps") or {}
        vision = bool(((props or {}).get("modalities") or {}).get("vision"))
        capabilities = Capabilities(
            images=vision if self._options.images is None else self._options.images,
            # llama-server ignores tools its template cannot render: refused instead.
            tools=bool(template_caps.get("supports_tools", True)),
            thinking=self.dialect.budget_field is not None,
            # Sent as response_format; the answer is checked against the schema.
            structured_outputs=True,
        )
        if props is not None and not self._options.concurrency:
            self._slots.size = int(props.get("total_slots") or 1)
        call_prefix = self._options.forced_call_prefix
        if call_prefix is None and kind == "llamaserver":
            template = str((props or {}).get("chat_template") or "")
            # Hermes-style templates open a call so; llama-server lets a forced call
            # start late (its "required" grammar allows text first).
            call_prefix = "<tool_call>\n" if "<tool_call>" in template else ""
        self._call_prefix = call_prefix or ""
        self.card = self._card(context, capabilities)
        await self._check_counting()
        log.info(
            "upstream ready",
            extra={
                "model": self.card.id,
                "upstream": self.url,
                "kind": kind,
                "upstream_model": self._model,
                "context": context,
                "counting": self.dialect.count_path or "estimate",
            },
        )

    async def _check_counting(self) -> None:
        """The counting endpoint answers, or start-up stops saying why (vLLM serves
        its render endpoint only with ``--enable-scale-out``)."""
        import anyio

        path = self.dialect.count_path
        if path is None:
            return
        body = {"model": self._model, "messages": [{"role": "user", "content": "x"}]}
        try:
            await anyio.to_thread.run_sync(self._count, path, body)
        except ParleyError as exc:
            hint = " (start vLLM with --enable-scale-out)" if self.dialect.kind == "vllm" else ""
            raise UpstreamStartError(
                f"{self.url}{path} does not count prompts{hint}: parley's count_tokens and "
                f"usage need it; it said: {exc.message}"
            ) from exc

    async def _models(self) -> dict[str, Any]:
        """``/v1/models``, waited for while the upstream is not up yet (not listening,
        or 503 while it loads its model), at most ``startup_timeout`` s. Not
        ``/health``: Ollama and generic servers have none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.startup_timeout
        while True:
            try:
                return await self._client.get_json("/v1/models")
            except OverloadedError:
                if loop.time() >= deadline:
                    raise
                log.info("waiting for the upstream", extra={"upstream": self.url})
            # Nothing to await but the upstream itself: look again shortly.
            await asyncio.sleep(START_POLL)

    async def close(self) -> None:
        await self._client.close()

    # --- prompts ----------------------------------------------------------------

    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> Prompt:
        body = chat_body(
            conversation, self.dialect, model=self._model, call_prefix=self._call_prefix
        )
        path = self.dialect.count_path
        if path is None:
            text = json.dumps(body["messages"], ensure_ascii=False) + json.dumps(
                body.get("tools") or []
            )
            n = math.ceil(len(text) / CHARS_PER_TOKEN)
            return ChatPrompt(conversation, "", range(n), body=body, exact=False)
        return ChatPrompt(conversation, "", range(self._count(path, body)), body=body)

    def _count(self, path: str, body: dict[str, Any]) -> int:
        """The upstream's count of ``body``'s prompt (blocking: off the loop)."""
        keys = self.dialect.count_keys
        counted = body if keys is None else {k: v for k, v in body.items() if k in keys}
        answer = self._client.count(path, counted)
        try:
            return count_of(self.dialect, answer)
        except ValueError as exc:
            raise EngineError(f"POST {path}: the upstream {self.url} answered {exc}") from None

    # --- generations --------------------------------------------------------------

    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        assert isinstance(prompt, ChatPrompt), "a prompt from this engine's prepare"
        budget = max(0, min(params.max_tokens, self.card.context_length - prompt.n_tokens))
        # Built now, so a sampler the upstream lacks is a 400 before the stream begins.
        body = {**prompt.body, **sampling(params, self.dialect, max_tokens=max(budget, 1))}
        self._slots.check()

        async def produce(run: TaskGeneration) -> None:
            async with self._slots.held(params.priority):
                try:
                    finished = await self._generate(prompt, params, body, run)
                except asyncio.CancelledError:
                    self._counters["cancelled"] += 1
                    raise
                except ParleyError:
                    self._counters["failed"] += 1
                    raise
                self._counters["completed"] += 1
                self._counters["tokens"] += finished.output_tokens
                run.emit(finished)

        return TaskGeneration(produce, interval=self._options.stream_interval_ms / 1000)

    async def _generate(
        self, prompt: ChatPrompt, params: SamplingParams, body: Body, run: TaskGeneration
    ) -> Finished:
        if prompt.n_tokens >= self.card.context_length:  # no room left to answer in
            return Finished(out_of_budget(0, params.max_tokens), 0)
        emit = run.emit
        reply = Reply(prompt.conversation, params, self.dialect, url=self.url)
        chunks = self._client.chat(body, on_answer=run.accepted)
        # Closed as soon as parley is done with it: the upstream then stops decoding.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                for event in reply.feed(chunk):
                    emit(event)
                if reply.done is not None:
                    break
        *events, finished = reply.end()
        for event in events:
            emit(event)
        assert isinstance(finished, Finished)
        if prompt.exact and reply.prompt_tokens not in (None, prompt.n_tokens):
            self._counters["miscounted"] += 1
            log.warning(
                "upstream counted the prompt differently",
                extra={"counted": prompt.n_tokens, "usage": reply.prompt_tokens},
            )
        if finished.cache is not None:  # never more than the prompt
            read = min(finished.cache.read, prompt.n_tokens)
            created = min(finished.cache.created_5m, prompt.n_tokens - read)
            finished = replace(finished, cache=CacheUsage(read=read, created_5m=created))
        return finished

    def stats(self) -> dict[str, Any]:
        return {"running": self._slots.running, "waiting": self._slots.waiting, **self._counters}


def _context_of(model: dict[str, Any], props: dict[str, Any] | None) -> int | None:
    """The context window: vLLM's and SGLang's ``max_model_len``, else llama-server's
    per-slot ``n_ctx`` (from ``/props``, or its ``/v1/models`` when ``/props`` is closed)."""
    settings = (props or {}).get("default_generation_settings") or {}
    meta = model.get("meta") or {}
    for value in (model.get("max_model_len"), settings.get("n_ctx"), meta.get("n_ctx")):
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class OpenAIChatOptions(UpstreamOptions):
    """The chat-mode upstream's options (``[engines.openai]``, ``--engine-opt``):
    the upstreams' own (url, api_key, concurrency, queues, timeouts, retries)
    and these. ``chat_template`` is refused: the upstream renders with its own."""

    model: str | None = None  # the upstream's model name; default: the first of /v1/models
    kind: Kind | None = None  # vllm|sglang|llamaserver|ollama|openai; default: detected
    context_length: int = 0  # 0: the upstream's (max_model_len, n_ctx), else 4096
    images: bool | None = None  # the model takes images; default: llama-server's /props
    forced_call_prefix: str | None = None  # prefilled when tool_choice forces a call


class UpstreamStartError(ParleyError):
    """Start-up error: the upstream does not say what to serve."""


def from_settings(settings: Settings) -> OpenAIChatEngine:
    from parley.config import ConfigError

    o = read_options(settings, "openai", OpenAIChatOptions, "http://127.0.0.1:8000")
    if o.kind is not None and o.kind not in KINDS:
        raise ConfigError(f"openai: the option 'kind' is one of {', '.join(KINDS)}, not {o.kind!r}")
    if o.context_length < 0:
        raise ConfigError("openai: context_length ≥ 0 required")
    if o.chat_template is not None:
        raise ConfigError(
            "openai: the upstream renders prompts with its own chat template in chat mode; "
            "give it the template instead (llama-server --chat-template-file)"
        )
    if len(o.url) != 1:
        raise ConfigError(
            "openai: one upstream URL (several backends for one model are for the tokens-mode "
            "engines, llamaserver and vllm)"
        )
    client = ChatClient(
        o.url[0],
        api_key=o.api_key,
        timeout=o.timeout,
        connect_timeout=o.connect_timeout,
        retries=o.retries,
    )
    return OpenAIChatEngine(client, o)

"""The chat-mode upstream engine: any OpenAI-compatible ``/v1/chat/completions``.

At start it reads the upstream's ``/v1/models`` (the model to serve, vLLM's
and SGLang's ``max_model_len``) and finds its kind (``dialects.detect``:
llama-server answers ``/props``, Ollama ``/api/version``) unless the option
``kind`` says it. ``prepare`` builds the chat body (``request.chat_body``)
and counts it where the upstream can render it (vLLM's render endpoint,
SGLang's ``/v1/tokenize``, llama-server's ``input_tokens``: the same body,
so ``count_tokens`` is what the generation's usage says), else estimates
(documented: about four characters a token). A generation is one task on
the event loop streaming the completion through ``reply.Reply``; leaving it
(client gone, stop sequence matched by parley, a second call when one was
allowed) closes the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from parley.conversation import Capabilities, Conversation
from parley.engines.admission import Slots
from parley.engines.base import (
    END,
    CacheUsage,
    Engine,
    EngineEvent,
    Finished,
    Generation,
    ModelCard,
    Prompt,
    QueuedGeneration,
    SamplingParams,
    out_of_budget,
)
from parley.engines.openai_chat.dialects import DIALECTS, KINDS, Dialect, Kind, count_of, detect
from parley.engines.openai_chat.reply import Reply
from parley.engines.openai_chat.request import Body, chat_body, sampling
from parley.engines.upstream_http import UPSTREAM, status_error, stream_json
from parley.errors import EngineError, ParleyError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.openai")

CHARS_PER_TOKEN = 4  # the estimate where the upstream cannot count


@dataclass(frozen=True)
class ChatPrompt(Prompt):
    """A prompt as the upstream will render it: the chat body, counted."""

    body: Body = field(default_factory=dict)
    exact: bool = True  # counted by the upstream (else estimated)


class OpenAIChatEngine(Engine):
    def __init__(self, options: OpenAIChatOptions) -> None:
        self._options = options
        self.url = options.url.rstrip("/")
        headers = {"authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        timeout = httpx.Timeout(options.timeout, connect=options.connect_timeout)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        # prepare runs in worker threads: counting is a blocking call of its own.
        self._counting = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.dialect: Dialect = DIALECTS[options.kind or "openai"]
        self._model = options.model or ""
        self._call_prefix = options.forced_call_prefix or ""
        self._slots = Slots(
            options.concurrency or 16, max_queue=options.max_queue, timeout=options.queue_timeout
        )
        # miscounted: answers whose usage.prompt_tokens differed from the exact count.
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "miscounted": 0}
        self.card = self._card(options.context_length or 4096, Capabilities(tools=True))

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
        models = await self._get("/v1/models")
        props = await self._get("/props", quiet=True)
        version = None
        if self._options.kind is None and props is None:
            version = await self._get("/api/version", quiet=True)
        kind = self._options.kind or detect(models, props, version is not None)
        self.dialect = DIALECTS[kind]
        listed = [m for m in (models or {}).get("data") or [] if isinstance(m, dict)]
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

    async def _get(self, path: str, *, quiet: bool = False) -> dict[str, Any] | None:
        """``GET path`` as JSON; with ``quiet``, None for any answer but a JSON 200
        (probing which kind of server this is)."""
        with UPSTREAM.crossing(f"GET {path}", url=self.url, timeout=self._options.timeout):
            response = await self._http.get(path)
            if quiet and response.status_code != 200:
                return None
            if response.status_code != 200:
                raise status_error(response, response.text, f"GET {path}", self.url)
            try:
                data = response.json()
            except json.JSONDecodeError:
                if quiet:
                    return None
                raise
            return data if isinstance(data, dict) else None

    async def close(self) -> None:
        await self._http.aclose()
        self._counting.close()

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
        what = f"POST {path}"
        keys = self.dialect.count_keys
        counted = body if keys is None else {k: v for k, v in body.items() if k in keys}
        # vLLM and SGLang say a prompt is too long only in prose: parley's own check
        # keeps them from it (the count is exact, max_tokens capped to the room left).
        with UPSTREAM.crossing(what, url=self.url, timeout=self._options.timeout):
            response = self._counting.post(path, json=counted)
            if response.status_code != 200:
                raise status_error(response, response.text, what, self.url)
            try:
                n = count_of(self.dialect, response.json())
            except ValueError as exc:
                raise EngineError(f"{what}: the upstream {self.url} answered {exc}") from None
        return ChatPrompt(conversation, "", range(n), body=body)

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

        return TaskGeneration(produce)

    async def _generate(
        self, prompt: ChatPrompt, params: SamplingParams, body: Body, run: TaskGeneration
    ) -> Finished:
        if prompt.n_tokens >= self.card.context_length:  # no room left to answer in
            return Finished(out_of_budget(0, params.max_tokens), 0)
        emit = run.emit
        reply = Reply(prompt.conversation, params, self.dialect, url=self.url)
        chunks = stream_json(
            self._http,
            "/v1/chat/completions",
            body,
            url=self.url,
            read_timeout=self._options.timeout,
            on_answer=run.accepted,
        )
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


class TaskGeneration(QueuedGeneration):
    """A generation made by a task on the event loop: ``produce(generation)``
    calls ``accepted()`` once the upstream took the work (``started`` returns
    then; at the latest with the first event) and ``emit`` for each event.
    Cancelling it cancels the task (an upstream request under way is closed).

    The same as the llama-server engine's; one of the two can go once both
    import it from one place."""

    def __init__(self, produce: Callable[[TaskGeneration], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        self._events_in: asyncio.Queue[Any] = asyncio.Queue()
        self._accepted: asyncio.Future[None] = loop.create_future()
        # Retrieved here, so an error nobody waited for is not logged as lost.
        self._accepted.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._task = loop.create_task(self._run(produce))

    async def _run(self, produce: Callable[[TaskGeneration], Awaitable[None]]) -> None:
        try:
            await produce(self)
        except Exception as exc:  # raised to the reader, or by started()
            if not self._accepted.done():
                self._accepted.set_exception(exc)
            self._events_in.put_nowait(exc)
        finally:
            self.accepted()
            self._events_in.put_nowait(END)

    def accepted(self) -> None:
        if not self._accepted.done():
            self._accepted.set_result(None)

    def emit(self, event: EngineEvent) -> None:
        self.accepted()
        self._events_in.put_nowait(event)

    async def started(self) -> None:
        await asyncio.shield(self._accepted)

    @property
    def _queue(self) -> asyncio.Queue[Any]:
        return self._events_in

    def cancel(self) -> None:
        self._done = True
        self._task.cancel()
        if not self._accepted.done():
            self._accepted.cancel()


@dataclass(frozen=True)
class OpenAIChatOptions:
    """The chat-mode upstream's options (``[engines.openai]``, ``--engine-opt``)."""

    url: str = ""
    model: str | None = None  # the upstream's model name; default: the first of /v1/models
    model_name: str | None = None  # the id parley serves it under
    api_key: str | None = None  # the upstream's own key
    kind: Kind | None = None  # vllm|sglang|llamaserver|ollama|openai; default: detected
    context_length: int = 0  # 0: the upstream's (max_model_len, n_ctx), else 4096
    images: bool | None = None  # the model takes images; default: llama-server's /props
    forced_call_prefix: str | None = None  # prefilled when tool_choice forces a call
    concurrency: int = 0  # requests sent at once; 0: llama-server's slots, else 16
    max_queue: int = 64
    queue_timeout: float = 300.0
    timeout: float = 600.0  # seconds without a byte from the upstream
    connect_timeout: float = 5.0


class UpstreamStartError(ParleyError):
    """Start-up error: the upstream does not say what to serve."""


def from_settings(settings: Settings) -> OpenAIChatEngine:
    from parley.config import ConfigError
    from parley.engines.options import engine_options

    base = {"model_name": settings.model_name}
    o = engine_options(settings, "openai", OpenAIChatOptions, base)
    if not o.url.startswith(("http://", "https://")):
        raise ConfigError(
            "openai: the option 'url' must be the upstream's http(s) URL "
            "(--engine-opt url=http://127.0.0.1:8000)"
        )
    if o.kind is not None and o.kind not in KINDS:
        raise ConfigError(f"openai: the option 'kind' is one of {', '.join(KINDS)}, not {o.kind!r}")
    if o.concurrency < 0 or o.max_queue < 0 or o.timeout <= 0 or o.connect_timeout <= 0:
        raise ConfigError("openai: concurrency ≥ 0, max_queue ≥ 0 and timeouts > 0 required")
    if o.context_length < 0:
        raise ConfigError("openai: context_length ≥ 0 required")
    return OpenAIChatEngine(o)

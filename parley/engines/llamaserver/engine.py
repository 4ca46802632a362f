"""The llama-server engine: parley's rendering and output protocol, llama-server's decoding.

At start it reads the upstream's ``/props`` (context per slot, slots, chat
template, model path) and loads the GGUF's vocabulary (the option ``model``,
else the upstream's ``model_path`` when it is readable here). ``prepare``
renders and counts exactly as the embedded engine does (``llamacpp.render``).
A generation is one task on the event loop (``TaskGeneration``) that sends
the token ids to ``/completion`` with the tool grammar and every sampler
pinned (llama-server's defaults are not the API's: temperature 0.8, top-k
40, min-p 0.05), and feeds what comes back through ``ToolCallParser``.
Stop sequences are matched by parley (llama-server does not say which one
matched on every path) and end the upstream request. A thinking section
over its budget, or ended by the model's end of generation, is closed by
parley: the upstream request ends and a new one continues from the prompt,
the tokens written and the closing marker (llama-server's prompt cache
makes that a few tokens' prefill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.conversation import Capabilities, Conversation
from parley.engines.admission import Slots
from parley.engines.base import (
    END,
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
from parley.engines.llamacpp.model_file import mtime, read_template
from parley.engines.llamacpp.output import THINK_FORCED_CLOSE, Grammar, LlamaPrompt, ToolCallParser
from parley.engines.llamacpp.prefix_cache import reused_usage
from parley.engines.llamacpp.render import Renderer
from parley.engines.llamacpp.vocab import LlamaVocab, ModelLoadError
from parley.engines.llamaserver.client import LlamaServerClient
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.llamaserver")

Emit = Callable[[EngineEvent], None]

# llama.cpp's grammar trigger kinds (common/chat.h): a regex anywhere in the output.
TRIGGER_PATTERN = 2


class LlamaServerEngine(Engine):
    def __init__(self, client: LlamaServerClient, options: LlamaServerOptions) -> None:
        self._client = client
        self._options = options
        self._vocab: LlamaVocab | None = None
        self._renderer: Renderer | None = None
        self._slots = Slots(1, max_queue=options.max_queue, timeout=options.queue_timeout)
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0}
        self.card = ModelCard(
            id=options.model_name or "llama-server",
            display_name=options.model_name or "llama-server",
            created_at="2024-01-01T00:00:00Z",
            context_length=4096,
            max_output_tokens=4096,
            capabilities=Capabilities(images=False, tools=True, prompt_cache=True),
        )

    async def start(self) -> None:
        import anyio

        await self._client.wait_ready(self._options.startup_timeout)
        props = await self._client.props()
        settings = props.get("default_generation_settings") or {}
        n_ctx = int(settings.get("n_ctx") or 0)
        if n_ctx <= 0:
            raise ModelLoadError(
                f"{self._client.url}/props gives no context size: is it llama-server?"
            )
        path = self._gguf(props)
        self._vocab = vocab = await anyio.to_thread.run_sync(LlamaVocab, path)
        slots = int(props.get("total_slots") or 1)
        self._slots.size = self._options.concurrency or slots
        model_id = self._options.model_name or path.stem.lower()
        self.card = ModelCard(
            id=model_id,
            display_name=f"{vocab.metadata('general.name') or path.stem} (llama-server)",
            created_at=mtime(path),
            context_length=n_ctx,
            max_output_tokens=n_ctx,
            capabilities=self.card.capabilities,
        )
        template = read_template(self._options.chat_template) or props.get("chat_template") or None
        self._renderer = Renderer(vocab, self.card, template)
        log.info(
            "upstream ready",
            extra={
                "model": model_id,
                "upstream": self._client.url,
                "n_ctx": n_ctx,
                "slots": slots,
                "build": props.get("build_info"),
            },
        )

    def _gguf(self, props: dict[str, Any]) -> Path:
        if self._options.model:
            return Path(self._options.model).expanduser()
        served = props.get("model_path")
        if served and Path(served).is_file():
            return Path(served)
        raise ModelLoadError(
            f"llama-server at {self._client.url} serves {served or 'a model'}, which is not "
            "readable here: give the same GGUF file with --engine-opt model=PATH (parley "
            "renders and counts prompts with its vocabulary)"
        )

    async def close(self) -> None:
        await self._client.close()
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None

    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> Prompt:
        assert self._renderer is not None, "engine not started"
        return self._renderer.prepare(conversation, limit=limit)

    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        assert isinstance(prompt, LlamaPrompt), "a prompt from this engine's prepare"
        self._slots.check()

        async def produce(run: TaskGeneration) -> None:
            async with self._slots.held(params.priority):
                reuse = _Reuse()
                try:
                    finished = await self._generate(prompt, params, run, reuse)
                except asyncio.CancelledError:
                    self._counters["cancelled"] += 1
                    raise
                except ParleyError:
                    self._counters["failed"] += 1
                    raise
                self._counters["completed"] += 1
                self._counters["tokens"] += finished.output_tokens
                if reuse.tokens is not None:  # the upstream's figures, known only now
                    finished = replace(
                        finished, cache=reused_usage(prompt.breakpoints, reuse.tokens)
                    )
                run.emit(finished)

        return TaskGeneration(produce)

    async def _generate(
        self, prompt: LlamaPrompt, params: SamplingParams, run: TaskGeneration, reuse: _Reuse
    ) -> Finished:
        assert self._vocab is not None
        emit = run.emit
        budget = max(0, min(params.max_tokens, self.card.context_length - prompt.n_tokens))
        if budget == 0:
            return Finished(out_of_budget(0, params.max_tokens), 0)
        conversation, grammar = prompt.conversation, prompt.grammar
        parser = ToolCallParser(
            conversation.tools,
            params.stop_sequences,
            grammar.syntax if grammar is not None else None,
            thinking=conversation.thinking_budget is not None,
        )
        think_left = conversation.thinking_budget or 0
        if budget < params.max_tokens:
            think_left = min(think_left, max(1, budget // 2))  # room for an answer
        tokens = list(prompt.tokens)
        produced = 0

        def ran_out() -> Finished:
            return Finished(out_of_budget(produced, params.max_tokens), produced)

        while True:
            close_thinking = False
            body = _body(tokens, budget - produced, params, grammar)
            # Closed as soon as parley is done with it: llama-server then stops decoding.
            answer = self._client.completion(body, on_answer=run.accepted)
            async with contextlib.aclosing(answer) as chunks:
                async for chunk in chunks:
                    if reuse.tokens is None and "timings" in chunk:
                        reuse.tokens = int(chunk["timings"].get("cache_n") or 0)
                    ids = chunk.get("tokens") or []
                    if parser.state == "thinking" and think_left <= 0 and ids:
                        close_thinking = True  # this token is dropped unseen
                        break
                    produced += len(ids)
                    tokens += ids
                    if parser.state == "thinking":
                        think_left -= len(ids)
                    for event in parser.feed(chunk.get("content") or ""):
                        emit(event)
                    if parser.duplicate:
                        return Finished("tool_use", produced)
                    if parser.stop_hit is not None:
                        return Finished("stop_sequence", produced, parser.stop_hit)
                    if not chunk.get("stop"):
                        if produced >= budget:
                            break
                        continue
                    if chunk.get("stop_type") == "eos" and parser.state == "thinking":
                        close_thinking = True
                        break
                    for event in parser.flush():
                        emit(event)
                    if chunk.get("stop_type") == "eos":
                        return Finished("tool_use" if parser.calls else "end_turn", produced)
                    return ran_out()
            if not close_thinking:
                for event in parser.flush():
                    emit(event)
                return ran_out()
            for event in parser.end_thinking():
                emit(event)
            forced = self._vocab.tokenize(THINK_FORCED_CLOSE, add_bos=False)
            tokens += forced
            produced += len(forced)
            if produced >= budget:
                return ran_out()

    def stats(self) -> dict[str, Any]:
        return {"running": self._slots.running, "waiting": self._slots.waiting, **self._counters}


def _body(
    tokens: list[int], n_predict: int, params: SamplingParams, grammar: Grammar | None
) -> dict[str, Any]:
    """A ``/completion`` request with every sampler pinned to the API's meaning."""
    body: dict[str, Any] = {
        "prompt": tokens,
        "n_predict": n_predict,
        "stream": True,
        "cache_prompt": True,
        "return_tokens": True,
        "timings_per_token": True,  # the first chunk says how much of the prompt was cached
        "temperature": params.temperature,
        "top_k": params.top_k or 0,
        "top_p": 1.0 if params.top_p is None else params.top_p,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "samplers": ["top_k", "top_p", "temperature"],
        "seed": -1 if params.seed is None else params.seed & 0xFFFFFFFF,
    }
    if grammar is not None:
        body["grammar"] = grammar.text
        if grammar.lazy_trigger is not None:
            body["grammar_lazy"] = True
            body["grammar_triggers"] = [
                {"type": TRIGGER_PATTERN, "value": re.escape(grammar.lazy_trigger)}
            ]
    return body


@dataclass
class _Reuse:
    """Prompt tokens the upstream took from its prefix cache (its first chunk's
    ``timings.cache_n``), once it said."""

    tokens: int | None = None


class TaskGeneration(QueuedGeneration):
    """A generation made by a task on the event loop: ``produce(generation)``
    calls ``accepted()`` once the upstream took the work (``started`` returns
    then; at the latest with the first event) and ``emit`` for each event.
    Cancelling it cancels the task (an upstream request under way is closed)."""

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
class LlamaServerOptions:
    """The llama-server engine's options (``[engines.llamaserver]``, ``--engine-opt``)."""

    url: str = ""
    model: str | None = None  # the GGUF the upstream serves (its vocabulary renders here)
    model_name: str | None = None  # the id parley serves it under
    api_key: str | None = None  # the upstream's own key (llama-server --api-key)
    chat_template: str | None = None  # a Jinja file overriding the upstream's template
    concurrency: int = 0  # requests sent at once; 0: the upstream's slots
    max_queue: int = 64
    queue_timeout: float = 300.0
    timeout: float = 600.0  # seconds without a byte from the upstream
    connect_timeout: float = 5.0
    startup_timeout: float = 120.0  # seconds to wait at start for the upstream's /health
    retries: int = 2  # resends of a request the upstream did not answer (client.py)


def from_settings(settings: Settings) -> LlamaServerEngine:
    from parley.config import ConfigError
    from parley.engines.options import engine_options

    # --model, --model-name and --chat-template mean the same as for the embedded engine.
    base = {"model": settings.model, "model_name": settings.model_name}
    base["chat_template"] = settings.chat_template
    o = engine_options(settings, "llamaserver", LlamaServerOptions, base)
    if not o.url.startswith(("http://", "https://")):
        raise ConfigError(
            "llamaserver: the option 'url' must be the upstream's http(s) URL "
            "(--engine-opt url=http://127.0.0.1:8080)"
        )
    if min(o.concurrency, o.max_queue, o.retries) < 0 or o.startup_timeout < 0:
        raise ConfigError(
            "llamaserver: concurrency, max_queue, retries and startup_timeout ≥ 0 required"
        )
    if o.timeout <= 0 or o.connect_timeout <= 0:
        raise ConfigError("llamaserver: timeout and connect_timeout > 0 required")
    client = LlamaServerClient(
        o.url,
        api_key=o.api_key,
        timeout=o.timeout,
        connect_timeout=o.connect_timeout,
        retries=o.retries,
    )
    return LlamaServerEngine(client, o)

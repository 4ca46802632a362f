"""Tokens mode: parley renders and parses, the upstream only decodes token ids.

``TokensEngine`` is the part every such engine shares: ``prepare`` renders
and counts with the GGUF's vocabulary exactly as the embedded engine does
(``llamacpp.render``), ``submit`` admits through ``admission.Slots`` and runs
one ``TaskGeneration``, and the generation loop feeds the upstream's text
through ``ToolCallParser``. A subclass starts itself (``_reach`` the
backends, reads their context size, loads the vocabulary, sets ``card`` and
the renderer, ``_watch_backends``), gives ``_fit`` (what one backend offers,
also asked of a backend coming back) and ``_pieces``: one upstream request
as a stream of ``Piece`` values, sent through ``_route`` to a backend of the
pool (``upstream.backends``: affinity, load, circuit breaker, failover).

The loop ends the upstream request (by closing that stream) as soon as
parley is done with it: a stop sequence matched, a duplicate tool call, the
budget spent, or a thinking section over its budget. A thinking section so
cut, or ended by the model's end of generation, is closed by parley: a new
request continues from the prompt, the tokens written and the closing
marker (the upstream's prefix cache makes that a few tokens' prefill).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from parley.conversation import Capabilities, Conversation
from parley.engines.admission import Slots
from parley.engines.base import (
    Engine,
    Finished,
    Generation,
    ModelCard,
    Prompt,
    SamplingParams,
    out_of_budget,
)
from parley.engines.llamacpp.model_file import mtime
from parley.engines.llamacpp.output import THINK_FORCED_CLOSE, Grammar, LlamaPrompt, ToolCallParser
from parley.engines.llamacpp.prefix_cache import reused_usage
from parley.engines.llamacpp.render import Renderer
from parley.engines.llamacpp.vocab import LlamaVocab
from parley.engines.upstream.backends import Attempt, Backend, Pool, affinity_key
from parley.engines.upstream.generation import Emit, TaskGeneration
from parley.engines.upstream.http import UpstreamClient
from parley.engines.upstream.options import UpstreamOptions
from parley.errors import ParleyError

log = logging.getLogger("parley.engine.upstream")

End = Literal["eos", "limit"]
ClientT = TypeVar("ClientT", bound=UpstreamClient)


@dataclass(frozen=True)
class Piece:
    """What one chunk of the upstream's stream brought: the text and token ids
    decoded, and ``end`` on the last one (``eos``: the model ended; ``limit``:
    the token budget did). Token ids never include the end-of-generation token."""

    text: str
    ids: Sequence[int] = ()
    end: End | None = None


@dataclass
class Report:
    """One generation's link with the upstream: ``accepted`` is called once it
    took a request (answered 200, before its prefill), ``cached`` is set to
    the prompt tokens it took from its prefix cache, once it says; ``affinity``
    is the prompt's key for choosing a backend (``backends.affinity_key``);
    ``breakpoints``: whether the prompt has cache breakpoints (without, the
    cache figure changes no usage, and an upstream need not be asked for it
    early, which may cost it something on every chunk)."""

    accepted: Callable[[], None]
    cached: int | None = None
    affinity: bytes | None = None
    breakpoints: bool = False


def tokenizer_probe(vocab: LlamaVocab) -> tuple[str, list[int]]:
    """A text whose ids tell tokenizers apart (bytes, digits, CJK, whitespace
    runs, a special token) and its ids here: a backend must give the same."""
    probe = f"Hello, wörld! 12345 東京\n\t  {vocab.token_text(vocab.eos)}x"
    return probe, vocab.tokenize(probe, add_bos=False)


@dataclass(frozen=True)
class Fit:
    """What one backend offers: its context per request, the requests it runs at once."""

    context: int
    slots: int


class TokensEngine(Engine, Generic[ClientT]):
    """An upstream engine in tokens mode (see the module docstring) over the
    backends ``clients`` (one per URL of the option ``url``)."""

    def __init__(
        self, options: UpstreamOptions, default_id: str, clients: Sequence[ClientT]
    ) -> None:
        self._options = options
        self._pool = Pool(
            clients,
            failures=options.breaker_failures,
            cooldown=options.breaker_cooldown,
            slack=options.affinity_slack,
        )
        # One backend retries by itself (UpstreamClient.answer); several fail over.
        self._attempts = 1 if len(clients) == 1 else options.retries + 1
        self._watch: asyncio.Task[None] | None = None
        self._said: dict[str, str] = {}  # what the health task last said of a backend kept out
        self._vocab: LlamaVocab | None = None
        self._renderer: Renderer | None = None
        self._slots = Slots(1, max_queue=options.max_queue, timeout=options.queue_timeout)
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0}
        self.card = ModelCard(
            id=options.model_name or default_id,
            display_name=options.model_name or default_id,
            created_at="2024-01-01T00:00:00Z",
            context_length=4096,
            max_output_tokens=4096,
            capabilities=Capabilities(
                images=False, tools=True, prompt_cache=True, structured_outputs=True
            ),
        )

    @abc.abstractmethod
    def _pieces(
        self,
        tokens: list[int],
        max_tokens: int,
        params: SamplingParams,
        grammar: Grammar | None,
        report: Report,
    ) -> AsyncGenerator[Piece, None]:
        """One upstream request decoding from ``tokens``, at most ``max_tokens``
        more, under ``grammar``; calls ``report.accepted`` when the upstream
        answered, sets ``report.cached`` when it says. Closing the generator
        must end the upstream request. Sent with ``_route``."""

    def _serve(self, path: Path, n_ctx: int, label: str, template: str | None) -> str:
        """The model card (id, name, context) and the renderer, once the
        vocabulary of ``path`` is loaded and the backends checked; its id."""
        assert self._vocab is not None, "the vocabulary is loaded first"
        model_id = self._options.model_name or path.stem.lower()
        self.card = ModelCard(
            id=model_id,
            display_name=f"{self._vocab.metadata('general.name') or path.stem} ({label})",
            created_at=mtime(path),
            context_length=n_ctx,
            max_output_tokens=n_ctx,
            capabilities=self.card.capabilities,
        )
        self._renderer = Renderer(self._vocab, self.card, template)
        return model_id

    @abc.abstractmethod
    async def _fit(self, client: ClientT) -> Fit:
        """What the backend offers (``ModelLoadError`` when it cannot serve here)."""

    def _route(
        self, report: Report, call: Callable[[ClientT, Attempt], AsyncGenerator[Piece, None]]
    ) -> AsyncGenerator[Piece, None]:
        """``call``'s pieces from the backend the pool chooses for ``report.affinity``."""
        return self._pool.stream(report.affinity, call, attempts=self._attempts)

    @property
    def _clients(self) -> list[ClientT]:
        return [b.client for b in self._pool.backends]

    async def _reach(self) -> list[Backend[ClientT]]:
        """The backends whose ``/health`` answers at start, waiting (up to
        ``startup_timeout``) until one does, then asking the others once; those
        not up start with their circuit open, for the health task to probe.
        None up: the first one's error."""
        backends = self._pool.backends
        timeout = self._options.startup_timeout
        waits = {asyncio.ensure_future(b.client.wait_ready(timeout)): b for b in backends}
        pending = set(waits)
        up: list[Backend[ClientT]] = []
        errors: list[tuple[Backend[ClientT], BaseException]] = []
        try:
            while pending and not up:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        up.append(waits[task])
                    else:
                        errors.append((waits[task], error))
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not up:
            raise min(errors, key=lambda e: backends.index(e[0]))[1]
        for backend in backends:  # the others: up now, or left to the health task
            if backend not in up and await backend.client.healthy():
                up.append(backend)
        for backend in backends:
            if backend not in up:
                self._pool.open(backend)
                log.warning(
                    "backend not up at start: its circuit is open until /health answers",
                    extra={"upstream": backend.url},
                )
        return [b for b in backends if b in up]

    async def _fits(self, up: Sequence[Backend[ClientT]]) -> Fit:
        """What the backends up at start agree on: the smallest context (said
        in the log when they differ); slots: the largest figure, for each backend."""
        fits = [await self._fit(b.client) for b in up]
        context = min(f.context for f in fits)
        if any(f.context != context for f in fits):
            log.warning(
                "backends differ in context: the smallest holds",
                extra={"contexts": {b.url: f.context for b, f in zip(up, fits, strict=True)}},
            )
        return Fit(context, max(f.slots for f in fits) * len(self._pool.backends))

    def _watch_backends(self) -> None:
        """Start the health task (one backend is tried even when its circuit is
        open, so there the task only keeps its state in ``stats`` true)."""
        self._watch = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._options.health_interval)
            down = self._pool.down()
            for backend in self._pool.backends:
                try:
                    if backend in down:
                        await self._probe(backend)
                    else:
                        await self._check(backend)
                except Exception:  # a bug: said, and the others still probed
                    log.exception("health probe failed", extra={"upstream": backend.url})

    async def _check(self, backend: Backend[ClientT]) -> None:
        """Open the circuit of a backend in use whose /health stopped answering
        200: requests go elsewhere before any has to fail there, and once all
        are down ``broken`` says so (parley's own /health answers 503)."""
        if await backend.client.healthy() or backend in self._pool.down():
            return  # up, or opened meanwhile by a failed request
        self._pool.open(backend)
        log.warning(
            "backend down: its /health does not answer 200", extra={"upstream": backend.url}
        )

    @property
    def broken(self) -> str | None:
        down = self._pool.down()
        if len(down) < len(self._pool.backends):
            return None
        return "every upstream backend is down: " + ", ".join(b.url for b in down)

    async def _probe(self, backend: Backend[ClientT]) -> None:
        """Close the circuit of a backend whose /health answers 200 and that still fits."""
        if not await backend.client.healthy():
            return
        try:
            fit = await self._fit(backend.client)
        except ParleyError as exc:
            self._kept_out(backend, "backend up but unusable: kept out", error=str(exc))
            return
        if fit.context < self.card.context_length:
            self._kept_out(
                backend,
                "backend up but its context is smaller than the model's: kept out",
                n_ctx=fit.context,
            )
            return
        self._said.pop(backend.url, None)
        self._pool.recovered(backend)
        log.info("backend back", extra={"upstream": backend.url})

    def _kept_out(self, backend: Backend[ClientT], message: str, **extra: object) -> None:
        """Logged once for as long as the reason holds (the probe repeats it)."""
        said = f"{message} {extra}"
        if self._said.get(backend.url) != said:
            self._said[backend.url] = said
            log.warning(message, extra={"upstream": backend.url, **extra})

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        for client in self._clients:
            await client.close()
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
                report = Report(
                    run.accepted,
                    affinity=affinity_key(prompt.tokens, prompt.breakpoints),
                    breakpoints=bool(prompt.breakpoints),
                )
                try:
                    finished = await self._generate(prompt, params, run.emit, report)
                except asyncio.CancelledError:
                    self._counters["cancelled"] += 1
                    raise
                except ParleyError:
                    self._counters["failed"] += 1
                    raise
                self._counters["completed"] += 1
                self._counters["tokens"] += finished.output_tokens
                if report.cached is not None:  # the upstream's figures, known only now
                    finished = replace(
                        finished, cache=reused_usage(prompt.breakpoints, report.cached)
                    )
                run.emit(finished)

        return TaskGeneration(produce, interval=self._options.stream_interval_ms / 1000)

    async def _generate(
        self, prompt: LlamaPrompt, params: SamplingParams, emit: Emit, report: Report
    ) -> Finished:
        assert self._vocab is not None
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
            pieces = self._pieces(tokens, budget - produced, params, grammar, report)
            # Closed as soon as parley is done with it: the upstream then stops decoding.
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    if parser.state == "thinking" and think_left <= 0 and piece.ids:
                        close_thinking = True  # this token is dropped unseen
                        break
                    produced += len(piece.ids)
                    tokens += piece.ids
                    if parser.state == "thinking":
                        think_left -= len(piece.ids)
                    for event in parser.feed(piece.text):
                        emit(event)
                    if parser.duplicate:
                        return Finished("tool_use", produced)
                    if parser.stop_hit is not None:
                        return Finished("stop_sequence", produced, parser.stop_hit)
                    if piece.end is None:
                        if produced >= budget:
                            break
                        continue
                    if piece.end == "eos" and parser.state == "thinking":
                        close_thinking = True
                        break
                    for event in parser.flush():
                        emit(event)
                    if piece.end == "eos":
                        return Finished("tool_use" if parser.calls else "end_turn", produced)
                    return ran_out()
            if not close_thinking:
                for event in parser.flush():
                    emit(event)
                return ran_out()
            for event in parser.end_thinking():
                emit(event)
            forced = self._vocab.tokenize(THINK_FORCED_CLOSE, add_bos=False)
            if grammar is not None and grammar.resume is not None:
                grammar = grammar.resume  # the lazy one would never see this close
            tokens += forced
            produced += len(forced)
            if produced >= budget:
                return ran_out()

    def stats(self) -> dict[str, Any]:
        return {
            "running": self._slots.running,
            "waiting": self._slots.waiting,
            **self._counters,
            "backends": self._pool.stats(),
        }

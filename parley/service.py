"""The messages service: what ``/v1/messages`` and ``count_tokens`` do, without HTTP.

``open`` is the one path of a Messages request, for ``POST /v1/messages``
and the batch worker alike: parse the body, meter it (``ratelimit.Meter``),
``prepare`` it (resolve the model, build the conversation, render and count
the prompt off the event loop; in a worker thread in the ``parley.offload``
slot for a big request; check the limits) and ``submit`` it to its engine.
The ``MessageRun`` it returns is read whole (``message``) or as Anthropic
stream events with pings while the engine is busy (``events``); both go
through ``MessageState``, so they agree exactly, and both charge the output
tokens to the meter when the run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import anyio

from parley.catalog import Catalog
from parley.compaction import (
    SUMMARY_MAX_TOKENS,
    CompactingGeneration,
    Plan,
    plan_of,
    refuse_prefill,
)
from parley.conversation import Conversation, build_conversation
from parley.conversation.compaction import compacted, summarising
from parley.conversation.context_edits import (
    AppliedEdit,
    Edit,
    Edited,
    apply_edits,
    edits_of,
)
from parley.engines.base import Engine, Generation, Prompt, SamplingParams
from parley.errors import (
    APIError,
    InvalidRequestError,
    OverloadedError,
    ParleyError,
    PromptTooLongError,
)
from parley.fetch import FetchPolicy, fetch_all
from parley.ids import message_id
from parley.offload import Offload
from parley.ratelimit import Meter
from parley.streaming.state import MessageState
from parley.thinking import Signer
from parley.wire import content as wc
from parley.wire import events as ev
from parley.wire import requests as wr
from parley.wire import responses as wresp
from parley.wire.parse import parse_body

log = logging.getLogger("parley.messages")

T = TypeVar("T")


class Draining:
    """Set when the server is asked to stop: open streams may go on until the
    deadline, then end with an error event (the client knows to retry)."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def begin(self, grace: float) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + grace
            log.info("draining: open streams have a grace period", extra={"seconds": grace})

    def overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass(frozen=True)
class Compaction:
    """A request that compacts: ``Prepared.prompt`` is then the summarising one."""

    plan: Plan
    prompt: Prompt  # the conversation's own (after any clearing edits)
    context: int  # the model's context window


@dataclass(frozen=True)
class Prepared:
    model: str
    engine: Engine
    prompt: Prompt
    params: SamplingParams
    context: wresp.ContextManagement | None = None  # what context_management applied
    compaction: Compaction | None = None


class Guard(Protocol):
    """Wraps work the client may give up on (e.g. stops it if the client leaves)."""

    def __call__(self, work: Awaitable[T], /) -> Awaitable[T]: ...


async def _as_is(work: Awaitable[T]) -> T:
    return await work


@dataclass
class MessageRun:
    """A request its engine has admitted."""

    stream: bool  # the client asked for a stream
    generation: Generation
    state: MessageState
    meter: Meter
    service: MessagesService

    def cancel(self) -> None:
        self.generation.cancel()

    def settle(self) -> None:
        """Charge the output tokens written (once; ``message`` does it itself)."""
        self.meter.spend_output(self.state.generated_tokens)

    async def message(self) -> wresp.Message:
        try:
            return await self.service.run(self.generation, self.state)
        finally:
            self.settle()

    def events(self, request_id: str | None) -> AsyncGenerator[ev.StreamEvent, None]:
        """The stream; whoever reads it calls ``settle`` when it ends."""
        return self.service.stream(self.generation, self.state, request_id)


def _prepare(
    engine: Engine, conversation: Conversation, edits: tuple[Edit, ...], limit: int | None
) -> Edited[Prompt]:
    if not edits:
        prompt = engine.prepare(conversation, limit=limit)
        return Edited(prompt, prompt.n_tokens, ())
    # Each edit is decided on exact counts: the prompts are counted whole (no
    # early refusal at ``limit``), the final one checked by the caller.
    return apply_edits(conversation, edits, engine.prepare)


def _applied(edit: AppliedEdit) -> wresp.AppliedEdit:
    if edit.kind == "clear_tool_uses_20250919":
        return wresp.ClearToolUsesApplied(
            cleared_tool_uses=edit.cleared, cleared_input_tokens=edit.cleared_input_tokens
        )
    return wresp.ClearThinkingApplied(
        cleared_thinking_turns=edit.cleared, cleared_input_tokens=edit.cleared_input_tokens
    )


class MessagesService:
    def __init__(
        self,
        catalog: Catalog,
        *,
        ping_interval: float,
        signer: Signer,
        redact_thinking: bool,
        draining: Draining | None = None,
        fetch: FetchPolicy | None = None,
        default_temperature: float = 1.0,
        offload: Offload | None = None,
        alias_max_tokens: int | None = None,
    ) -> None:
        self._alias_max_tokens = alias_max_tokens  # the cap under Claude ids (None: none)
        self.offload = offload or Offload()  # big requests' parsing and rendering
        self._temperature = default_temperature  # for requests that send none (the API's is 1)
        self._draining = draining or Draining()
        self._fetch = fetch or FetchPolicy()
        self._catalog = catalog
        self._ping_interval = ping_interval
        self._signer = signer
        self._redact = redact_thinking

    async def _fetch_documents(self, req: wr.CountTokensRequest) -> None:
        """Replace documents given by URL with their fetched text (or refuse them)."""
        jobs: list[tuple[list[Any], int, Any, str]] = []
        for i, message in enumerate(req.messages):
            if not isinstance(message.content, list):
                continue
            for j, block in enumerate(message.content):
                if isinstance(block, wc.DocumentBlock) and isinstance(block.source, wc.URLSource):
                    path = f"messages.{i}.content.{j}.source.url"
                    jobs.append((message.content, j, block, path))
        targets = [(block.source.url, path) for _, _, block, path in jobs]
        texts = await fetch_all(targets, self._fetch)
        for (content, j, block, _), text in zip(jobs, texts, strict=True):
            source = wc.PlainTextSource(type="text", media_type="text/plain", data=text)
            content[j] = block.model_copy(update={"source": source})

    async def _render(
        self, engine: Engine, req: wr.CountTokensRequest, *, size: int, limit: int | None = None
    ) -> Edited[Prompt]:
        """The prompt of ``req`` (a body of ``size`` bytes) after its context
        edits; with ``limit``, the engine may refuse a prompt it can prove has
        ``limit`` tokens or more."""
        await self._fetch_documents(req)
        edits = edits_of(req)

        def build() -> Conversation:
            # Refusals name the served model, which an alias stands for.
            return build_conversation(
                req, engine.card.capabilities, model=engine.card.id, signer=self._signer
            )

        if self.offload.heavy(size):  # in the caller's slot (parley.offload)
            return await self.offload.run(size, lambda: _prepare(engine, build(), edits, limit))
        conversation = build()
        if not engine.prepare_off_loop or self.offload.inline_render(size):
            return _prepare(engine, conversation, edits, limit)
        return await anyio.to_thread.run_sync(lambda: _prepare(engine, conversation, edits, limit))

    async def count_tokens(self, req: wr.CountTokensRequest, *, size: int = 0) -> wresp.TokenCount:
        edited = await self._render(self._catalog.resolve(req.model), req, size=size)
        context = None
        if req.context_management is not None:
            context = wresp.CountTokensContextManagement(original_input_tokens=edited.original)
        return wresp.TokenCount(input_tokens=edited.prompt.n_tokens, context_management=context)

    async def prepare(self, req: wr.CreateMessageRequest, *, size: int = 0) -> Prepared:
        """Everything before ``submit``, for a request whose body had ``size`` bytes."""
        engine = self._catalog.resolve(req.model)
        card = engine.card
        # A Claude model id (an alias here) allows more output than the local model
        # can hold: the answer then ends at the context window, as the API's
        # ``model_context_window_exceeded`` says. The local id has its own limit.
        if req.max_tokens > card.max_output_tokens and not self._catalog.is_alias(req.model):
            raise InvalidRequestError(
                f"max_tokens: {req.max_tokens} > {card.max_output_tokens}, which is the maximum "
                f"allowed number of output tokens for {req.model}"
            )
        context = card.context_length
        try:
            edited = await self._render(engine, req, size=size, limit=context)
        except PromptTooLongError as exc:  # the engine's early refusal, named as the client did
            raise PromptTooLongError(
                exc.tokens, context=context, model=req.model, exact=exc.exact
            ) from None
        prompt = edited.prompt
        if prompt.n_tokens >= context:
            raise PromptTooLongError(prompt.n_tokens, context=context, model=req.model)
        max_tokens = req.max_tokens
        cap = self._alias_max_tokens
        if cap is not None and max_tokens > cap and self._catalog.is_alias(req.model):
            max_tokens = cap  # the answer ends there with stop_reason "max_tokens"
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=self._temperature if req.temperature is None else req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop_sequences=tuple(req.stop_sequences or ()),
        )
        applied = None
        if req.context_management is not None:
            applied = wresp.ContextManagement(applied_edits=[_applied(e) for e in edited.applied])
        plan = plan_of(req)
        if plan is None or not plan.triggered(prompt.n_tokens):
            return Prepared(req.model, engine, prompt, params, applied)
        refuse_prefill(prompt.conversation.prefill)
        conversation = summarising(prompt.conversation, plan.prompt)
        summary = await self._prepare_one(engine, conversation, limit=context, model=req.model)
        compaction = Compaction(plan, prompt, context)
        return Prepared(req.model, engine, summary, params, applied, compaction)

    async def _prepare_one(
        self, engine: Engine, conversation: Conversation, *, limit: int, model: str
    ) -> Prompt:
        """``conversation``'s prompt, refused when it does not fit the context."""

        def prepare() -> Prompt:
            return engine.prepare(conversation, limit=limit)

        try:
            prompt = (
                await anyio.to_thread.run_sync(prepare) if engine.prepare_off_loop else prepare()
            )
        except PromptTooLongError as exc:
            raise PromptTooLongError(
                exc.tokens, context=limit, model=model, exact=exc.exact
            ) from None
        if prompt.n_tokens >= limit:
            raise PromptTooLongError(prompt.n_tokens, context=limit, model=model)
        return prompt

    async def open(
        self,
        body: bytes,
        meter: Meter,
        *,
        priority: int = 0,
        guard: Guard = _as_is,
        batch: bool = False,
    ) -> MessageRun:
        """Parse, meter, prepare and submit one Messages request (``body``, its
        JSON); ``guard`` wraps the preparing (which may fetch URL documents)."""
        size = len(body)
        async with self.offload.slot(size):  # a big body: parsed and rendered off the loop
            req = await parse_body(wr.CreateMessageRequest, body, self.offload)
            del body  # not kept alive beside its parsed request
            if batch and req.stream:
                raise InvalidRequestError("stream: streaming is not supported in message batches")
            meter.admit_request()  # before prepare: a key at its limit costs no rendering
            prepared = await guard(self.prepare(req, size=size))
        meter.admit_input(prepared.prompt.n_tokens)
        params = replace(prepared.params, priority=priority, tenant=meter.owner)
        prepared = replace(prepared, params=params)
        generation, state = self.submit(prepared)
        try:
            # Until the work is under way nothing has reached the client, so a
            # refusal (an upstream's 429, a prompt it finds too long) is a status.
            await guard(generation.started())
        except BaseException:
            generation.cancel()
            raise
        return MessageRun(bool(req.stream), generation, state, meter, self)

    def submit(self, prepared: Prepared) -> tuple[Generation, MessageState]:
        """Admit the generation (or raise 529) and open its message state."""
        generation: Generation
        if prepared.compaction is not None:
            generation = self._compacting(prepared, prepared.compaction)
            # The message's figures are its answer's, known once the summary is written.
            input_tokens, cache = 0, generation.cache_usage
        else:
            generation = prepared.engine.submit(prepared.prompt, prepared.params)
            cache = generation.cache_usage
            input_tokens = prepared.prompt.n_tokens - cache.read - cache.created
        state = MessageState(
            message_id(),
            prepared.model,
            input_tokens,
            cache=cache,
            sign=self._signer.sign,
            seal=self._signer.seal if self._redact else None,
            context_management=prepared.context,
        )
        return generation, state

    def _compacting(self, prepared: Prepared, compaction: Compaction) -> CompactingGeneration:
        """The summary's generation, then (unless paused) the answer's on the summary."""
        engine, params = prepared.engine, prepared.params
        # The request's max_tokens bounds each generation it makes, the summary's too.
        budget = min(SUMMARY_MAX_TOKENS, params.max_tokens)
        summary_params = replace(params, max_tokens=budget, stop_sequences=())
        summary = engine.submit(prepared.prompt, summary_params)

        async def answer(content: str | None) -> tuple[Generation, int]:
            prompt = compaction.prompt  # a failed summary changes nothing
            if content is not None:
                conversation = compacted(prompt.conversation, content)
                limit = compaction.context
                prompt = await self._prepare_one(
                    engine, conversation, limit=limit, model=prepared.model
                )
            return engine.submit(prompt, params), prompt.n_tokens

        return CompactingGeneration(
            summary,
            prepared.prompt.n_tokens,
            sign=self._signer.sign_compaction,
            answer=None if compaction.plan.pause else answer,
        )

    async def run(self, generation: Generation, state: MessageState) -> wresp.Message:
        state.start()
        try:
            async for event in generation:
                state.feed(event)
        finally:
            if state.stop_reason is None:
                generation.cancel()
        return state.message()

    async def stream(
        self, generation: Generation, state: MessageState, request_id: str | None
    ) -> AsyncGenerator[ev.StreamEvent, None]:
        for event in state.start():
            yield event
        try:
            # While draining, wake at least every second to notice the deadline.
            interval = min(self._ping_interval, 1.0) if self._draining.deadline else None
            async for item in generation.heartbeat(interval or self._ping_interval):
                if self._draining.overdue():
                    raise OverloadedError("the server is shutting down; retry the request")
                if item is None:
                    yield ev.Ping()
                    continue
                for event in state.feed(item):
                    yield event
        except ParleyError as exc:
            log.warning("stream failed", extra={"error": exc.message})
            for event in state.fail(exc, request_id):
                yield event
        except Exception:
            log.exception("stream failed")
            for event in state.fail(APIError("Internal server error"), request_id):
                yield event
        finally:
            if state.stop_reason is None:
                generation.cancel()

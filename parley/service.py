"""The messages service: what ``/v1/messages`` and ``count_tokens`` do, without HTTP.

``prepare`` resolves the model, builds the conversation, renders and counts
the prompt off the event loop and checks the limits; ``run`` collects a whole
message; ``stream`` yields Anthropic stream events with pings while the engine
is busy. Both go through ``MessageState``, so they agree exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from parley.catalog import Catalog
from parley.conversation import build_conversation
from parley.engines.base import Engine, EngineEvent, Generation, Prompt, SamplingParams
from parley.errors import APIError, InvalidRequestError, ParleyError
from parley.ids import message_id
from parley.streaming.state import MessageState
from parley.wire import events as ev
from parley.wire import requests as wr
from parley.wire import responses as wresp

log = logging.getLogger("parley.messages")


@dataclass(frozen=True)
class Prepared:
    model: str
    engine: Engine
    prompt: Prompt
    params: SamplingParams


class MessagesService:
    def __init__(self, catalog: Catalog, *, ping_interval: float) -> None:
        self._catalog = catalog
        self._ping_interval = ping_interval

    async def _render(self, req: wr.CountTokensRequest) -> tuple[Engine, Prompt]:
        engine = self._catalog.resolve(req.model)
        conversation = build_conversation(req, engine.card.capabilities, model=req.model)
        prompt = await anyio.to_thread.run_sync(engine.prepare, conversation)
        return engine, prompt

    async def count_tokens(self, req: wr.CountTokensRequest) -> wresp.TokenCount:
        _, prompt = await self._render(req)
        return wresp.TokenCount(input_tokens=prompt.n_tokens)

    async def prepare(self, req: wr.CreateMessageRequest) -> Prepared:
        engine = self._catalog.resolve(req.model)
        card = engine.card
        if req.max_tokens > card.max_output_tokens:
            raise InvalidRequestError(
                f"max_tokens: {req.max_tokens} > {card.max_output_tokens}, which is the maximum "
                f"allowed number of output tokens for {req.model}"
            )
        engine, prompt = await self._render(req)
        if prompt.n_tokens >= card.context_length:
            raise InvalidRequestError(
                f"prompt is too long: {prompt.n_tokens} tokens > {card.context_length - 1} "
                f"maximum (the context window of {req.model} is {card.context_length} tokens, "
                "prompt and output together)"
            )
        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop_sequences=tuple(req.stop_sequences or ()),
        )
        return Prepared(req.model, engine, prompt, params)

    def submit(self, prepared: Prepared) -> tuple[Generation, MessageState]:
        """Admit the generation (or raise 529) and open its message state."""
        generation = prepared.engine.submit(prepared.prompt, prepared.params)
        state = MessageState(message_id(), prepared.model, prepared.prompt.n_tokens)
        return generation, state

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
    ) -> AsyncIterator[ev.StreamEvent]:
        for event in state.start():
            yield event
        try:
            async for item in _with_pings(generation, self._ping_interval):
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


_DONE = object()


async def _with_pings(generation: Generation, interval: float) -> AsyncIterator[EngineEvent | None]:
    """Engine events, with ``None`` whenever ``interval`` seconds pass without one.

    One pump task per stream moves events into a queue; the consumer arms a
    timer only while the queue is empty. Nothing is allocated per event
    beyond the queue slot, which keeps the per-token cost low.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in generation:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_DONE)

    task = asyncio.create_task(pump())
    try:
        while True:
            if queue.empty():
                timer = loop.call_later(interval, queue.put_nowait, None)
                item = await queue.get()
                timer.cancel()
            else:
                item = queue.get_nowait()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

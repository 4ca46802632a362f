"""Compaction (beta): the served model summarises the conversation, the response
carries the summary as a signed ``compaction`` block first, and the answer (if
any) is generated on the compacted conversation.

Two ways to ask:

- ``context_management.edits: [{"type": "compact_20260112", ...}]``: once the
  prompt (after any clearing edits) exceeds ``trigger`` input tokens (default
  150,000; parley takes any value, as local contexts are small), the
  conversation is summarised; with ``pause_after_compaction`` the response
  ends there (``stop_reason: "compaction"``), else the answer follows in the
  same response. ``instructions`` are added to parley's summarising prompt.
- the top-level ``compaction: {"type": "summarize"}``: the request only
  compacts (always; ``stop_reason: "compaction"``); ``instructions`` that are
  not blank replace parley's prompt.

The summary is one generation of the served model, of at most
``SUMMARY_MAX_TOKENS`` tokens (and no more than the request's ``max_tokens``,
which bounds each generation a request makes), on the conversation with the summarising prompt
asked last (tools offered but not callable, no thinking). A summary that comes
out empty is a block with ``content: null``, which changes nothing when sent
back. Usage: ``usage.iterations`` holds the compaction's own figures and the
answer's; the top-level figures are the answer's alone (zero when paused), as
the SDK documents. The rate limiter is charged the summarising prompt and
both generations' output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from parley.conversation.compaction import DEFAULT_PROMPT
from parley.engines.base import Compacted, EngineEvent, Finished, Generation, TextChunk
from parley.errors import CompactionError
from parley.wire import context_management as wcm
from parley.wire import requests as wr

DEFAULT_TRIGGER_TOKENS = 150_000
# What a summary may take: enough for the gist of a long conversation, small
# beside any context parley serves (SmolLM2's 8,192 tokens).
SUMMARY_MAX_TOKENS = 400


@dataclass(frozen=True)
class Plan:
    """What a request asks of compaction."""

    prompt: str  # the whole summarising prompt
    pause: bool  # no answer after the summary
    trigger: int | None  # compact above this many prompt tokens; None: always

    def triggered(self, tokens: int) -> bool:
        return self.trigger is None or tokens > self.trigger


def plan_of(req: wr.CreateMessageRequest) -> Plan | None:
    """The request's compaction, if it asks for one."""
    if req.compaction is not None:
        instructions = (req.compaction.instructions or "").strip()
        return Plan(instructions or DEFAULT_PROMPT, pause=True, trigger=None)
    edits = req.context_management.edits if req.context_management is not None else None
    for edit in edits or ():
        if isinstance(edit, wcm.Compact):
            extra = (edit.instructions or "").strip()
            prompt = f"{DEFAULT_PROMPT}\n\n{extra}" if extra else DEFAULT_PROMPT
            trigger = edit.trigger.value if edit.trigger is not None else DEFAULT_TRIGGER_TOKENS
            return Plan(prompt, pause=bool(edit.pause_after_compaction), trigger=trigger)
    return None


def refuse_prefill(prefill: str) -> None:
    if prefill:
        raise CompactionError(
            "messages: a request that compacts cannot end on an assistant turn to continue "
            "(a prefill)",
            code="compaction_incomplete_turn",
        )


Answer = Callable[[str | None], Awaitable[tuple[Generation, int]]]
"""Prepare and submit the answer on the compacted conversation (the summary, or
None for a failed one): its generation and its prompt's tokens."""


class CompactingGeneration(Generation):
    """The summarising generation, then ``Compacted``, then the answer's events
    (or a ``Finished("compaction")`` when paused). Cancelling stops whichever runs."""

    def __init__(
        self,
        summary: Generation,
        prompt_tokens: int,
        *,
        sign: Callable[[str], str],
        answer: Answer | None,
    ) -> None:
        self._summary = summary
        self._prompt_tokens = prompt_tokens
        self._sign = sign
        self._answer = answer
        self._current = summary
        self._cancelled = False

    async def started(self) -> None:
        await self._summary.started()

    def cancel(self) -> None:
        self._cancelled = True
        self._current.cancel()

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[EngineEvent]:
        text: list[str] = []
        finished: Finished | None = None
        async for event in self._summary:
            if isinstance(event, TextChunk):
                text.append(event.text)
            elif isinstance(event, Finished):
                finished = event
        if finished is None or self._cancelled:
            return  # cancelled: the reader ends without a Finished
        content = "".join(text).strip() or None
        cache = finished.cache or self._summary.cache_usage
        signature = self._sign(content) if content is not None else None
        done = Compacted(content, signature, self._prompt_tokens, finished.output_tokens, cache)
        if self._answer is None:
            yield done
            yield Finished("compaction", 0)
            return
        generation, tokens = await self._answer(content)
        self._current = generation
        if self._cancelled:
            generation.cancel()
            return
        try:
            await generation.started()
        except BaseException:
            generation.cancel()
            raise
        yield replace(done, answer_tokens=tokens, answer_cache=generation.cache_usage)
        async for event in generation:
            yield event

"""One running sequence: its slot, sampler, budgets, and what its tokens become.

``Running.accept`` takes one sampled token through UTF-8 decoding and the
output parser (thinking, text, tool calls, stop sequences) and says whether
the sequence ends there. When the thinking budget is spent (or the model
stops while thinking), parley writes the closing marker itself: the sampled
token is dropped unseen and the marker is fed like a prompt chunk, then the
answer is sampled after it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from parley.engines.base import EngineEvent, FinishReason, out_of_budget
from parley.engines.llamacpp.jobs import Job
from parley.engines.llamacpp.ops import NativeOps
from parley.engines.llamacpp.output import THINK_FORCED_CLOSE, Grammar, ToolCallParser
from parley.engines.llamacpp.prefix_cache import Breakpoint
from parley.engines.llamacpp.slots import Slot

End = tuple[FinishReason, str | None]  # why the sequence ended, and the stop sequence hit


@dataclass
class Running:
    job: Job
    slot: Slot
    sampler: Any
    budget: int
    prompt_left: list[int]  # prompt tokens not yet decoded
    pending: int | None = None  # sampled, not yet decoded
    produced: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    parser: ToolCallParser = field(default_factory=lambda: ToolCallParser(()))
    think_left: int = 0  # thinking tokens left in the budget
    writes: list[Breakpoint] = field(default_factory=list)  # cache snapshots still to take
    started: bool = False  # its first event was emitted
    swap: Grammar | None = None  # the sampler's next grammar (parley closed the reasoning)

    @classmethod
    def begin(
        cls, job: Job, slot: Slot, sampler: Any, budget: int, prompt_left: list[int]
    ) -> Running:
        """A sequence starting in ``slot``, with its output parser and thinking budget."""
        params, conversation, grammar = job.params, job.prompt.conversation, job.prompt.grammar
        thinking = conversation.thinking_budget
        parser = ToolCallParser(
            conversation.tools,
            params.stop_sequences,
            grammar.syntax if grammar is not None else None,
            thinking=thinking is not None,
        )
        run = cls(job, slot, sampler, budget, prompt_left, parser=parser)
        run.writes = list(job.cache.writes)
        run.think_left = thinking or 0
        if budget < params.max_tokens:
            # The context, not max_tokens, bounds this answer: thinking gets at
            # most half of the room, so an answer can follow.
            run.think_left = min(run.think_left, max(1, budget // 2))
        return run

    @property
    def reserved(self) -> int:
        return len(self.slot.cached) + len(self.prompt_left) + self.budget - self.produced

    def accept(self, native: NativeOps, token: int) -> tuple[list[EngineEvent], End | None]:
        """The events of one sampled token, and how the sequence ends if it does."""
        parser = self.parser
        eog = native.is_eog(token)
        if parser.state == "thinking" and (eog or self.think_left <= 0):
            return self._close_thinking(native)
        if eog:
            events = parser.feed(self.decoder.decode(b"", final=True)) + parser.flush()
            return events, ("tool_use" if parser.calls else "end_turn", None)
        self.produced += 1
        if parser.state == "thinking":
            self.think_left -= 1
        events = parser.feed(self.decoder.decode(native.piece(token)))
        if parser.duplicate:
            return events, ("tool_use", None)
        if parser.stop_hit is not None:
            return events, ("stop_sequence", parser.stop_hit)
        if self.produced >= self.budget:
            events += parser.feed(self.decoder.decode(b"", final=True)) + parser.flush()
            return events, self.out_of_budget()
        self.pending = token
        return events, None

    def out_of_budget(self) -> End:
        return (out_of_budget(self.produced, self.job.params.max_tokens), None)

    def _close_thinking(self, native: NativeOps) -> tuple[list[EngineEvent], End | None]:
        events = self.parser.feed(self.decoder.decode(b"", final=True))
        events += self.parser.end_thinking()
        forced = native.tokenize(THINK_FORCED_CLOSE, add_bos=False)
        grammar = self.job.prompt.grammar
        if grammar is not None and grammar.resume is not None:
            self.swap = grammar.resume  # the lazy one never sees the close written here
        self.prompt_left = forced
        self.pending = None
        self.produced += len(forced)
        return events, self.out_of_budget() if self.produced >= self.budget else None

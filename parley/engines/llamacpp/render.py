"""A conversation rendered and tokenized exactly as llama.cpp decodes it.

The model's chat template renders the conversation; every text that came
from the request is bracketed by a per-request nonce first, so after
rendering it is known which characters the template wrote (special tokens
parsed: ``<|im_start|>``) and which the user wrote (never parsed: a user
cannot forge a turn). Cache-breakpoint tags become token positions. The
embedded engine renders with its ``LlamaNative``; an upstream engine that
sends token ids renders with a vocabulary-only ``LlamaVocab``.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Any

from parley.conversation import Conversation, Part, TextPart, ThinkingPart, ToolResultPart, Turn
from parley.engines.base import ModelCard
from parley.engines.llamacpp.chat_template import ChatTemplate
from parley.engines.llamacpp.grammar import GrammarCheck, grammar_for
from parley.engines.llamacpp.output import LlamaPrompt
from parley.engines.llamacpp.prefix_cache import Breakpoint
from parley.engines.llamacpp.slots import common_prefix
from parley.engines.llamacpp.vocab import LlamaVocab
from parley.errors import PromptTooLongError


class Renderer:
    def __init__(
        self,
        vocab: LlamaVocab,
        card: ModelCard,
        template: str | None = None,
        grammars: GrammarCheck | None = None,
    ) -> None:
        """``template`` overrides the GGUF's chat template; ``card`` names the
        model and its context in a refusal."""
        self._vocab = vocab
        self._card = card
        self._grammars = grammars or GrammarCheck()
        self.bos_text = vocab.token_text(vocab.bos)
        self.add_bos = vocab.add_bos
        self.token_bytes = vocab.longest_token_bytes()  # most bytes one token stands for
        self.template = ChatTemplate(
            template or vocab.chat_template(),
            bos_token=self.bos_text,
            eos_token=vocab.token_text(vocab.eos),
        )

    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> LlamaPrompt:
        """Render, then tokenize: the template's own text may hold special tokens
        (``<|im_start|>``); text that came from the request never does, so a
        user cannot forge a turn by writing one."""
        nonce = secrets.token_hex(4)
        guard = (f"\ue004{nonce}", f"\ue005{nonce}")
        rendered = self.template.render(_guarded(conversation, *guard))
        segments, offsets = _segments(rendered, conversation, guard)
        text = "".join(seg for seg, _ in segments)
        add_bos = self.add_bos and not text.startswith(self.bos_text)
        if limit is not None and self.token_bytes:
            # A character is at least a byte: a lower bound, known without tokenizing.
            at_least = -(-len(text) // self.token_bytes)
            if at_least >= limit:
                raise PromptTooLongError(
                    at_least, context=self._card.context_length, model=self._card.id, exact=False
                )
        tokens = self._tokenize(segments, add_bos)
        # A breakpoint's position: the tokens the prompt shares with its text up to the tag.
        breakpoints = tuple(
            Breakpoint(common_prefix(self._tokenize(segments, add_bos, upto=at), tokens), ttl)
            for at, ttl in offsets
        )
        vocab = self._vocab
        grammar = grammar_for(
            conversation, self.template.syntax, lambda g: self._grammars.usable(vocab, g)
        )
        return LlamaPrompt(conversation, text, tokens, grammar, breakpoints)

    def _tokenize(
        self, segments: list[tuple[str, bool]], add_bos: bool, upto: int | None = None
    ) -> list[int]:
        """Tokens of the segments (the first ``upto`` characters), special tokens
        parsed only where the segment allows it."""
        out: list[int] = []
        done = 0
        for i, (segment, special) in enumerate(segments):
            if upto is not None:
                if done >= upto:
                    break
                segment = segment[: upto - done]
            out += self._vocab.tokenize(segment, add_bos=add_bos and i == 0, special=special)
            done += len(segment)
        if not segments and add_bos:
            out = self._vocab.tokenize("", add_bos=True)
        return out


def _guarded(conversation: Conversation, start: str, end: str) -> Conversation:
    """The conversation with every text that came from the request between
    ``start`` and ``end``, so its place in the rendered prompt is known."""

    def wrap(text: str) -> str:
        return f"{start}{text}{end}"

    def guard(part: Part) -> Part:
        match part:
            case TextPart(text=text):
                return TextPart(wrap(text))
            case ThinkingPart(text=text):
                return ThinkingPart(wrap(text))
            case ToolResultPart():
                return dataclasses.replace(part, text=wrap(part.text))
        return part

    return dataclasses.replace(
        conversation,
        system=wrap(conversation.system) if conversation.system else conversation.system,
        turns=tuple(Turn(t.role, tuple(guard(p) for p in t.parts)) for t in conversation.turns),
        prefill=wrap(conversation.prefill) if conversation.prefill else "",
    )


def _segments(
    text: str, conversation: Conversation, guard: tuple[str, str]
) -> tuple[list[tuple[str, bool]], list[tuple[int, Any]]]:
    """The rendered prompt as ``(text, special tokens allowed)`` segments without
    any tags, and where each breakpoint tag first stood (a character offset in
    the joined text) with its TTL. A tag the template dropped is no breakpoint."""
    start, end = guard
    ttl = {m.tag: m.ttl for m in conversation.marks}
    pattern = re.compile("|".join(re.escape(tag) for tag in (start, end, *ttl)))
    segments: list[tuple[str, bool]] = []
    offsets: dict[str, int] = {}
    done = length = depth = 0

    def add(chunk: str) -> None:
        nonlocal length
        if not chunk:
            return
        special = depth == 0
        if segments and segments[-1][1] == special:
            segments[-1] = (segments[-1][0] + chunk, special)
        else:
            segments.append((chunk, special))
        length += len(chunk)

    for match in pattern.finditer(text):
        add(text[done : match.start()])
        tag = match.group()
        if tag == start:
            depth += 1
        elif tag == end:
            depth = max(0, depth - 1)
        else:
            offsets.setdefault(tag, length)
        done = match.end()
    add(text[done:])
    return segments, sorted((at, ttl[tag]) for tag, at in offsets.items())

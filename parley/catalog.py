"""The served models and their aliases, as ``/v1/models`` lists them."""

from __future__ import annotations

from collections.abc import Iterable

from parley.conversation import EFFORT_BUDGETS, Capabilities
from parley.engines.base import Engine
from parley.errors import InvalidRequestError, NotFoundError
from parley.wire import responses as wr
from parley.wire.responses import ModelInfo, ModelPage


def model_capabilities(caps: Capabilities) -> wr.ModelCapabilities:
    """What ``/v1/models`` says a model supports: what parley honours for it.

    Every engine gets batches and thinking (rendered by parley itself, so any
    model can take it; not interleaved between tool calls; unless the card says
    its upstream cannot bound it) and ``effort``, which sizes adaptive
    thinking's budget. Images and tools follow the engine card, and so do the
    context edits that clear them and structured outputs (parley's grammar, or
    an upstream's own). Compaction (``compact_20260112``, the ``compaction``
    parameter) is a generation of the served model, so every engine has it.
    Citations, PDF input, server tools and code execution
    are refused for every model, so they are not supported.
    """
    yes, no = wr.CapabilitySupport(supported=True), wr.CapabilitySupport(supported=False)
    return wr.ModelCapabilities(
        batch=yes,
        citations=no,
        code_execution=no,
        compaction=wr.CompactionCapability(supported=True, summarize=yes),
        context_management=wr.ContextManagementCapability(
            supported=True,
            clear_thinking_20251015=yes if caps.thinking else no,
            clear_tool_uses_20250919=yes if caps.tools else no,
            compact_20260112=yes,
        ),
        effort=wr.EffortCapability(
            supported=True,
            **{level: yes if level in EFFORT_BUDGETS else no for level in _EFFORT_LEVELS},
        ),
        image_input=yes if caps.images else no,
        pdf_input=no,
        server_tools=wr.ServerToolsCapability(supported=False, code_execution=no, web_search=no),
        structured_outputs=yes if caps.structured_outputs else no,
        thinking=wr.ThinkingCapability(
            supported=caps.thinking,
            types=wr.ThinkingTypes(
                adaptive=yes if caps.thinking else no,
                between_tools=no,
                disabled=yes,
                enabled=yes if caps.thinking else no,
            ),
        ),
    )


_EFFORT_LEVELS = ("low", "medium", "high", "max", "xhigh")


class Catalog:
    """Maps every model id a client may send (served ids and aliases) to an engine."""

    def __init__(
        self,
        engines: Iterable[Engine],
        aliases: dict[str, str],
        *,
        claude_default: str | None = None,
    ) -> None:
        self._engines = {e.card.id: e for e in engines}
        # Any other ``claude-*`` id (a newer model than the alias list knows) goes here.
        self._claude_default = claude_default
        for alias, target in aliases.items():
            if target not in self._engines:
                raise ValueError(f"alias '{alias}' points at unknown model '{target}'")
        self._aliases = {a: t for a, t in aliases.items() if a not in self._engines}

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    def resolve(self, model: str) -> Engine:
        target = self._aliases.get(model, model)
        if target not in self._engines and self._claude_default and model.startswith("claude-"):
            target = self._claude_default
        engine = self._engines.get(target)
        if engine is None:
            raise NotFoundError(f"model: {model} ({self._served_here()})")
        return engine

    def _served_here(self) -> str:
        """The hint of an unknown model's 404: the ids that exist."""
        served = ", ".join(self._engines)
        extra = [a for a in self._aliases if not a.startswith("claude-")]
        if extra:
            served += f"; aliases: {', '.join(extra)}"
        if self._claude_default:
            served += f"; any claude-* id reaches {self._claude_default}"
        return f"served here: {served}"

    def is_alias(self, model: str) -> bool:
        if model in self._engines:
            return False
        return model in self._aliases or bool(self._claude_default and model.startswith("claude-"))

    def info(self, model_id: str) -> ModelInfo:
        card = self.resolve(model_id).card
        display = card.display_name if model_id == card.id else f"{model_id} → {card.id}"
        return ModelInfo(
            id=model_id,
            display_name=display,
            created_at=card.created_at,
            max_input_tokens=card.context_length,
            max_tokens=card.max_output_tokens,
            capabilities=model_capabilities(card.capabilities),
        )

    def ids(self) -> list[str]:
        """Served models first, then aliases, each in a stable order."""
        return [*self._engines, *self._aliases]

    def page(self, *, limit: int, before_id: str | None, after_id: str | None) -> ModelPage:
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit: Input should be between 1 and 1000")
        if before_id is not None and after_id is not None:
            raise InvalidRequestError("before_id and after_id cannot be given together")
        ids = self.ids()
        start, end = 0, len(ids)
        if after_id is not None:
            start = self._position(ids, after_id, "after_id") + 1
            end = min(len(ids), start + limit)
        elif before_id is not None:
            end = self._position(ids, before_id, "before_id")
            start = max(0, end - limit)
        else:
            end = min(len(ids), limit)
        chosen = ids[start:end]
        has_more = (start > 0) if before_id is not None else (end < len(ids))
        return ModelPage(
            data=[self.info(i) for i in chosen],
            has_more=has_more,
            first_id=chosen[0] if chosen else None,
            last_id=chosen[-1] if chosen else None,
        )

    @staticmethod
    def _position(ids: list[str], cursor: str, name: str) -> int:
        try:
            return ids.index(cursor)
        except ValueError:
            raise InvalidRequestError(f"{name}: no model with id '{cursor}'") from None

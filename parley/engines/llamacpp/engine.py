"""The embedded engine: llama.cpp through llama-cpp-python, with continuous batching.

``LlamaNative`` owns the model and one context; ``BatchScheduler`` runs the
decode loop on its own thread, so the event loop never blocks on the model.
The prompt is rendered with the model's own chat template from the GGUF
metadata, and ``prepare`` tokenizes exactly what will be decoded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.conversation import (
    Capabilities,
    Conversation,
)
from parley.engines.base import Engine, Generation, ModelCard, Prompt, SamplingParams
from parley.engines.llamacpp.grammar import GrammarCheck
from parley.engines.llamacpp.model_file import (
    EMBEDDED_ID,
    check_gguf,
    embedded_model_path,
    mtime,
    read_template,
)
from parley.engines.llamacpp.native import LlamaNative, NativeConfig
from parley.engines.llamacpp.output import LlamaPrompt
from parley.engines.llamacpp.prefix_cache import PrefixCache
from parley.engines.llamacpp.render import Renderer
from parley.engines.llamacpp.scheduler import BatchScheduler
from parley.errors import ModelLoadError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.llamacpp")

__all__ = ["EMBEDDED_ID", "LlamaCppEngine", "ModelLoadError", "embedded_model_path"]


class LlamaCppEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str,
        config: NativeConfig,
        max_queue: int = 64,
        prefill_chunk: int = 128,
        chat_template: str | None = None,
        cache: PrefixCache | None = None,
        queue_timeout: float = 300.0,
        stream_interval: float = 0.0,
        park_budget: int = 0,
        grammar_step_budget: float = 3.0,
    ) -> None:
        self.model_path = model_path
        self._grammar_step_budget = grammar_step_budget
        self._grammars = GrammarCheck()
        self._park_budget = park_budget
        self._queue_timeout = queue_timeout
        self._stream_interval = stream_interval
        self._cache = cache
        self._template_override = chat_template
        self._config = config
        self._max_queue = max_queue
        self._prefill_chunk = prefill_chunk
        self._model_id = model_id
        self._native: LlamaNative | None = None
        self._scheduler: BatchScheduler | None = None
        self._renderer: Renderer | None = None
        self.card = ModelCard(
            id=model_id,
            display_name=model_id,
            created_at=mtime(model_path),
            context_length=config.n_ctx,
            max_output_tokens=config.n_ctx,
            capabilities=Capabilities(
                images=False, tools=True, prompt_cache=cache is not None, structured_outputs=True
            ),
        )

    async def start(self) -> None:
        import anyio

        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        started = time.perf_counter()
        log.info("loading model", extra={"model": self._model_id, "path": str(self.model_path)})
        native = LlamaNative(self.model_path, self._config)
        self._native = native
        name = native.metadata("general.name") or self.model_path.stem
        self.card = ModelCard(
            id=self._model_id,
            display_name=f"{name} ({self.model_path.name})",
            created_at=self.card.created_at,
            context_length=native.n_ctx,
            max_output_tokens=native.n_ctx,
            capabilities=self.card.capabilities,
        )
        self._renderer = Renderer(native, self.card, self._template_override, self._grammars)
        self._scheduler = BatchScheduler(
            native,
            n_parallel=self._config.n_seq_max,
            max_queue=self._max_queue,
            prefill_chunk=self._prefill_chunk,
            cache=self._cache,
            queue_timeout=self._queue_timeout,
            stream_interval=self._stream_interval,
            park_budget=self._park_budget,
            grammar_step_budget=self._grammar_step_budget,
        )
        self._scheduler.start()
        log.info(
            "model loaded",
            extra={
                "model": self._model_id,
                "n_ctx": native.n_ctx,
                "trained_ctx": native.n_ctx_train,
                "rope": native.rope,
                "parallel": self._config.n_seq_max,
                "threads": self._config.n_threads,
                # What the chat template does: tools through the template (Hermes-style
                # <tool_call>) or parley's fallback format; a reasoning mode of its own.
                "tool_format": "template" if self._renderer.template.native_tools else "fallback",
                "reasoning_template": self._renderer.template.reasoning,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._native is not None:
            self._native.close()
            self._native = None

    def prepare(self, conversation: Conversation, *, limit: int | None = None) -> Prompt:
        assert self._renderer is not None, "engine not started"
        return self._renderer.prepare(conversation, limit=limit)

    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        assert self._scheduler is not None, "engine not started"
        assert isinstance(prompt, LlamaPrompt), "a prompt from this engine's prepare"
        return self._scheduler.submit(prompt, params)

    @property
    def broken(self) -> str | None:
        if self._scheduler is not None and not self._scheduler.alive:
            return self._scheduler.dead or "the decode loop ended"
        return None

    def stats(self) -> dict[str, Any]:
        stats = self._scheduler.stats() if self._scheduler else {}
        if self._cache is not None:
            stats["prompt_cache"] = self._cache.stats()
        return stats


@dataclass(frozen=True)
class LlamaOptions:
    """The llama.cpp engine's options (``[engines.llamacpp]``, ``--engine-opt``).

    Their defaults are the flat settings of the same names (``--n-ctx``,
    ``--parallel``, ...), which keep working."""

    model: str | None = None
    model_name: str | None = None
    chat_template: str | None = None
    n_ctx: int = 8192
    n_batch: int = 512
    rope_scaling: str = "auto"
    rope_scale: float | None = None
    kv_type: str = "q8_0"
    parallel: int = 8
    prefill_chunk: int = 128
    threads: int | None = None
    max_queue: int = 64
    queue_timeout: float = 300.0
    stream_interval_ms: float = 20.0
    cache_budget_mb: int = 1024
    cache_min_tokens: int = 1024
    idle_cache_mb: int = 1024
    grammar_step_timeout: float = 3.0


def from_settings(settings: Settings) -> LlamaCppEngine:
    from parley.engines.options import engine_options

    base = {f.name: getattr(settings, f.name) for f in dataclasses.fields(LlamaOptions)}
    o = engine_options(settings, "llamacpp", LlamaOptions, base)
    _check(o)
    path = Path(o.model).expanduser() if o.model else embedded_model_path()
    check_gguf(path)
    model_id = o.model_name or (EMBEDDED_ID if not o.model else path.stem.lower())
    config = NativeConfig(
        n_ctx=o.n_ctx,
        n_seq_max=o.parallel,
        n_batch=o.n_batch,
        n_threads=o.threads or max(1, os.cpu_count() or 1),
        rope_scaling=o.rope_scaling,
        rope_scale=o.rope_scale,
        kv_type=o.kv_type,
    )
    return LlamaCppEngine(
        path,
        model_id=model_id,
        config=config,
        max_queue=o.max_queue,
        prefill_chunk=o.prefill_chunk,
        chat_template=read_template(o.chat_template),
        queue_timeout=o.queue_timeout,
        stream_interval=o.stream_interval_ms / 1000,
        park_budget=o.idle_cache_mb << 20,
        grammar_step_budget=o.grammar_step_timeout,
        cache=PrefixCache(budget_bytes=o.cache_budget_mb << 20, min_tokens=o.cache_min_tokens)
        if o.cache_budget_mb > 0
        else None,
    )


def _check(o: LlamaOptions) -> None:
    """The same limits the flat settings are held to (an option may bypass them)."""
    from parley.config import KV_TYPES, ConfigError

    if o.n_ctx < 256 or not 1 <= o.parallel <= 64 or o.max_queue < 1:
        raise ConfigError("llamacpp: n_ctx ≥ 256, parallel 1-64 and max_queue ≥ 1 are required")
    if o.rope_scaling not in ("auto", "none", "linear", "yarn"):
        raise ConfigError("llamacpp option 'rope_scaling' must be auto, none, linear or yarn")
    if o.kv_type not in KV_TYPES:
        raise ConfigError(f"llamacpp option 'kv_type' must be one of {', '.join(KV_TYPES)}")
    if o.grammar_step_timeout <= 0 or o.idle_cache_mb < 0 or o.cache_budget_mb < 0:
        raise ConfigError("llamacpp: grammar_step_timeout > 0, idle/cache budgets ≥ 0 required")

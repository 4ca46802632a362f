"""A thin, typed wrapper over llama.cpp's C API (through llama-cpp-python's ctypes).

It owns the model, one context with ``n_seq_max`` sequences sharing a unified
KV cache, and the vocabulary. Every foreign failure is translated here into
``parley.errors``; nothing above this module touches ctypes.

Not thread-safe: the scheduler thread owns the decode path. ``tokenize`` and
``piece`` read only the immutable vocabulary and may be called from any thread.
"""

from __future__ import annotations

import ctypes
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np

from parley.config import KV_TYPES
from parley.engines.llamacpp.ops import BatchEntry
from parley.engines.llamacpp.output import Grammar
from parley.engines.llamacpp.vocab import LLAMA, LlamaVocab
from parley.errors import EngineError, ModelLoadError
from parley.logs import stderr_muted

log = logging.getLogger("parley.engine.llamacpp")

GREEDY = "greedy"  # the sampler of greedy decoding: an argmax over the logits, no chain


@dataclass
class Constrained:
    """A grammar's sampler with a fast path: the token is drawn without the grammar
    (``free``: GREEDY or a chain of temperature and distribution) and checked alone
    against it; only when the grammar refuses that token is the whole vocabulary
    walked through it (``chain``: grammar first). This is exact: greedy takes the
    best token, and at any temperature a draw from the whole distribution that the
    grammar allows is a draw from the distribution the grammar leaves (renormalised),
    as is the fallback; so the mixture is too. With ``top_k``/``top_p`` the two
    differ (they cut before or after the grammar), so those requests walk every
    token (``free`` is None)."""

    chain: Any  # grammar, then the samplers
    grammar: Any  # the chain's first sampler (owned by the chain)
    free: Any  # GREEDY, a chain without the grammar, or None
    walked: int = 0  # steps that needed the whole vocabulary (for stats and tests)


FLASH_ATTN_ENABLED = 1


RopeScaling = str  # "auto", "none", "linear" or "yarn"
_ROPE_TYPES = {"none": 0, "linear": 1, "yarn": 2}


@dataclass(frozen=True)
class NativeConfig:
    n_ctx: int  # KV cells shared by all sequences (and the longest one sequence may use)
    n_seq_max: int
    n_batch: int
    n_threads: int
    # Context extension: "auto" is YaRN by n_ctx / trained context when n_ctx exceeds it.
    rope_scaling: RopeScaling = "auto"
    rope_scale: float | None = None  # context multiplier; None: n_ctx / trained context
    kv_type: str = "q8_0"  # the KV cache's element type (parley.config.KV_TYPES)


class LlamaNative(LlamaVocab):
    """The model and one context: what the scheduler decodes with (``NativeOps``)."""

    def __init__(self, path: Path, config: NativeConfig) -> None:
        super().__init__(path, vocab_only=False)
        with LLAMA.crossing(f"load {path}", loading=True):
            self._load(path, config)

    def _load(self, path: Path, config: NativeConfig) -> None:
        self.config = config
        params = L.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_batch
        params.n_seq_max = config.n_seq_max
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads
        params.flash_attn_type = FLASH_ATTN_ENABLED
        params.type_k = params.type_v = KV_TYPES[config.kv_type]
        params.kv_unified = True
        params.no_perf = True
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self._model))
        self.rope = self._rope(params, config)
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp could not create a context for {path}")
        self._memory = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(config.n_batch, 0, 1)
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_batch = config.n_batch
        self._logits_row = ctypes.c_float * self._n_vocab
        # llama_get_logits_ith as an address, called without releasing the GIL: it
        # only looks up a row, and a release there lets the event loop's thread
        # take the GIL while this one waits to get it back.
        held = ctypes.PyDLL(L.llama_cpp._lib._name).llama_get_logits_ith
        held.argtypes, held.restype = [ctypes.c_void_p, ctypes.c_int32], ctypes.c_void_p
        self._logits_at = held
        # One candidate, to ask a grammar about the token drawn without it.
        self._one_data = (L.llama_token_data * 1)()
        self._one_token = L.llama_token_data_array(
            data=ctypes.cast(self._one_data, L.llama_token_data_p), size=1, selected=-1
        )

    def _rope(self, params: Any, config: NativeConfig) -> str:
        """Set RoPE scaling for a context longer than the model was trained on;
        returns what was chosen (for the start-up log)."""
        mode = config.rope_scaling
        trained = self.n_ctx_train or config.n_ctx
        factor = config.rope_scale or max(1.0, config.n_ctx / trained)
        if mode == "auto":
            mode = "yarn" if config.n_ctx > trained else "model"
        if mode == "model":
            return "model default"
        if mode not in _ROPE_TYPES:
            raise ModelLoadError(f"unknown RoPE scaling '{mode}' (auto, none, linear or yarn)")
        params.rope_scaling_type = _ROPE_TYPES[mode]
        if mode != "none":
            params.rope_freq_scale = 1.0 / factor
            params.yarn_orig_ctx = trained
        return f"{mode} x{factor:g}" if mode != "none" else "none"

    def close(self) -> None:
        if self._ctx:
            L.llama_batch_free(self._batch)
            L.llama_free(self._ctx)
            self._ctx = None
        super().close()

    # --- decoding (the scheduler thread) ----------------------------------------

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.seq_id
            batch.logits[i] = entry.logits
        with LLAMA.crossing("decode a batch"):
            rc = L.llama_decode(self._ctx, batch)
        if rc == 1:
            raise EngineError("llama.cpp found no room in the KV cache for this batch")
        if rc != 0:
            raise EngineError(f"llama.cpp failed to decode a batch (code {rc})")

    def forget(self, seq_id: int, from_pos: int = 0) -> None:
        """Drop a sequence's KV cells from ``from_pos`` on."""
        L.llama_memory_seq_rm(self._memory, seq_id, from_pos, -1)

    def save_seq(self, seq_id: int) -> tuple[Any, int]:
        """A copy of one sequence's KV cells (and their positions), and its size in bytes."""
        with LLAMA.crossing("copy a sequence's KV state"):
            size = int(L.llama_state_seq_get_size(self._ctx, seq_id))
            buf = (ctypes.c_uint8 * size)()
            written = int(L.llama_state_seq_get_data(self._ctx, buf, size, seq_id))
        if written != size:
            raise EngineError("llama.cpp could not copy a sequence's KV state")
        return buf, size

    def restore_seq(self, seq_id: int, state: Any, size: int) -> bool:
        """Replace a sequence's cells with a saved state; False when llama.cpp finds
        no room for it (the sequence is left empty)."""
        with LLAMA.crossing("restore a sequence's KV state"):
            read = int(L.llama_state_seq_set_data(self._ctx, state, size, seq_id))
        if read != size:
            self.forget(seq_id)
            return False
        return True

    def seq_pos_max(self, seq_id: int) -> int:
        return int(L.llama_memory_seq_pos_max(self._memory, seq_id))

    # --- sampling ----------------------------------------------------------------

    def new_sampler(
        self,
        *,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        seed: int | None,
        grammar: Grammar | None = None,
    ) -> Any:
        if temperature <= 0.0 and grammar is None:
            return GREEDY
        with LLAMA.crossing("build a sampler"):
            chain = self._chain(temperature, top_p, top_k, seed, grammar)
            if grammar is None:
                return chain
            free: Any = None
            if temperature <= 0.0:
                free = GREEDY
            elif not top_k and (top_p is None or top_p >= 1.0):
                other = None if seed is None else seed + 1
                free = self._chain(temperature, None, None, other, None)
            return Constrained(chain, L.llama_sampler_chain_get(chain, 0), free)

    def _chain(
        self,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        seed: int | None,
        grammar: Grammar | None,
    ) -> Any:
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if grammar is not None:
            try:
                L.llama_sampler_chain_add(chain, self._grammar_sampler(grammar))
            except BaseException:
                L.llama_sampler_free(chain)  # not leaked with the refused grammar
                raise
        if temperature <= 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if top_k:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(top_k))
        if top_p is not None and top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
        chosen = secrets.randbits(32) if seed is None else seed & 0xFFFFFFFF
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(chosen))
        return chain

    def _grammar_sampler(self, grammar: Grammar) -> Any:
        text, root = grammar.text.encode(), grammar.root.encode()
        with stderr_muted():  # a refused grammar is printed whole (prompt text) to stderr
            if grammar.lazy_trigger is None:
                sampler = L.llama_sampler_init_grammar(self._vocab, text, root)
            else:
                patterns = (ctypes.c_char_p * 1)(re.escape(grammar.lazy_trigger).encode())
                no_tokens = (L.llama_token * 1)()
                sampler = L.llama_sampler_init_grammar_lazy_patterns(
                    self._vocab, text, root, patterns, 1, no_tokens, 0
                )
        if not sampler:
            raise EngineError("llama.cpp rejected the grammar built from the tool schemas")
        return sampler

    def sample(self, sampler: Any, index: int) -> int:
        if isinstance(sampler, Constrained):
            return self._constrained(sampler, index)
        if sampler is GREEDY:
            # A sampler chain copies all logits into candidates first; argmax reads
            # them in place (~15 us instead of ~60 us a token for this vocabulary).
            row = self._logits_row.from_address(self._logits_at(self._ctx, index))
            return int(np.frombuffer(memoryview(row), dtype=np.float32).argmax())
        return int(L.llama_sampler_sample(sampler, self._ctx, index))

    def _constrained(self, sampler: Constrained, index: int) -> int:
        if sampler.free is not None:
            token = self.sample(sampler.free, index)
            one, candidate = self._one_token, self._one_data[0]
            # (llama-cpp-python types the fields as ctypes values; ctypes takes ints)
            candidate.id = token  # type: ignore[assignment]
            candidate.logit, candidate.p = 0.0, 0.0
            one.size, one.selected, one.sorted = 1, -1, False
            L.llama_sampler_apply(sampler.grammar, ctypes.byref(one))
            if candidate.logit != float("-inf"):
                L.llama_sampler_accept(sampler.chain, token)
                return token
        sampler.walked += 1
        return int(L.llama_sampler_sample(sampler.chain, self._ctx, index))

    @staticmethod
    def free_sampler(sampler: Any) -> None:
        if isinstance(sampler, Constrained):
            L.llama_sampler_free(sampler.chain)
            if sampler.free is not None and sampler.free is not GREEDY:
                L.llama_sampler_free(sampler.free)
        elif sampler is not GREEDY:
            L.llama_sampler_free(sampler)

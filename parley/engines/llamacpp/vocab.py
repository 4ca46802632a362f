"""A model's vocabulary and metadata through llama.cpp, without a context.

``LlamaVocab`` loads a GGUF (``vocab_only``: no weights in memory) and
tokenizes, detokenizes, reads the chat template and checks grammars: what
rendering and counting a prompt need. ``LlamaNative`` extends it with the
weights and a context; an upstream engine uses it alone, to render and
count exactly what it sends as token ids.
"""

from __future__ import annotations

import atexit
import ctypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llama_cpp as L

from parley.boundary import Boundary
from parley.engines.llamacpp.output import Grammar
from parley.errors import EngineError, ModelLoadError, ParleyError
from parley.logs import stderr_muted

# The bindings open /dev/null twice at import (llama_cpp._utils) and never close
# it: a ResourceWarning at every interpreter exit. Closed once nothing runs.
for _null in (getattr(L._utils, "outnull_file", None), getattr(L._utils, "errnull_file", None)):
    if _null is not None:
        atexit.register(_null.close)


def _failed(exc: BaseException, what: str, context: Mapping[str, Any]) -> ParleyError:
    reason = f"llama.cpp could not {what}: {type(exc).__name__}: {exc}"
    return ModelLoadError(reason) if context.get("loading") else EngineError(reason)


# What the bindings raise (a ctypes call given a wrong value, a buffer that
# cannot be allocated, the shared library refusing to load) becomes an
# EngineError, or a ModelLoadError while the model loads.
LLAMA = Boundary("llama.cpp", [((ctypes.ArgumentError, OSError, ValueError, MemoryError), _failed)])


@L.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp logs to stderr by default; parley keeps its own logs structured."""


class LlamaVocab:
    def __init__(self, path: Path, *, vocab_only: bool = True) -> None:
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        with LLAMA.crossing(f"load {path}", loading=True):
            L.llama_log_set(_quiet, ctypes.c_void_p())
            L.llama_backend_init()
            model_params = L.llama_model_default_params()
            model_params.vocab_only = vocab_only
            self._model = L.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path} (is it a GGUF file?)")
        self._vocab = L.llama_model_get_vocab(self._model)
        self._n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}  # token -> its bytes, filled as tokens appear
        self._eog: dict[int, bool] = {}

    def close(self) -> None:
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    # --- vocabulary and metadata (any thread) -----------------------------------

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = L.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        raw = L.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    @property
    def bos(self) -> int:
        return int(L.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(L.llama_vocab_eos(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(L.llama_vocab_get_add_bos(self._vocab))

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """Tokens of ``text``; with ``special``, special-token text (``<|im_start|>``)
        becomes the special token, otherwise it is ordinary text."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        with LLAMA.crossing("tokenize the prompt"):
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
            if n < 0:
                capacity = -n
                buf = (L.llama_token * capacity)()
                n = L.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            raise EngineError("llama.cpp could not tokenize the prompt")
        return list(buf[:n])

    def longest_token_bytes(self) -> int | None:
        """The most bytes of text one token stands for, or None when the
        vocabulary gives no such bound. A text of B bytes then has at least
        B / this many tokens (``LlamaCppEngine.prepare`` refuses on it).

        In byte-level BPE and SentencePiece vocabularies each token consumes
        exactly the bytes of its text (special tokens: their text; ``▁``: one
        space; an unknown character: at most 4 bytes), unless it strips the
        whitespace beside it (LSTRIP/RSTRIP), which it does not show. WordPiece
        and Unigram normalize the text (lowercase, drop accents, NFKC) first, so
        their tokens may stand for more than they show: no bound for them.
        """
        if L.llama_vocab_type(self._vocab) not in (L.LLAMA_VOCAB_TYPE_SPM, L.LLAMA_VOCAB_TYPE_BPE):
            return None
        strips = L.LLAMA_TOKEN_ATTR_LSTRIP | L.LLAMA_TOKEN_ATTR_RSTRIP
        buf = ctypes.create_string_buffer(256)
        longest = 4
        for token in range(self._n_vocab):
            if L.llama_vocab_get_attr(self._vocab, token) & strips:
                return None
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            longest = max(longest, abs(n))  # negative: the length that did not fit
        return longest

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece(token)
        return cached

    def _piece(self, token: int) -> bytes:
        n = L.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._piece_buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(L.llama_vocab_is_eog(self._vocab, token))
        return eog

    def grammar_ok(self, grammar: Grammar) -> bool:
        """Whether llama.cpp accepts the grammar (any thread: it reads the vocabulary only)."""
        with stderr_muted():
            sampler = L.llama_sampler_init_grammar(
                self._vocab, grammar.text.encode(), grammar.root.encode()
            )
        if not sampler:
            return False
        L.llama_sampler_free(sampler)
        return True

"""Whether llama.cpp's own grammar matcher accepts a text: the GBNF as decoding
follows it, not a re-implementation.

Each character is offered as its single-character token (the vocabulary is
byte-level, so ASCII has one); a token the grammar forbids gets a logit of
-inf from the grammar sampler, and the end of the text is accepted when the
end-of-generation token is allowed.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp as L

from parley.engines.llamacpp.grammar_json import SafeConverter
from parley.engines.llamacpp.vocab import LlamaVocab


class Acceptor:
    def __init__(self, vocab: LlamaVocab) -> None:
        self._vocab = vocab
        self._tokens: dict[str, int] = {}

    def _token(self, char: str) -> int:
        token = self._tokens.get(char)
        if token is None:
            tokens = self._vocab.tokenize(char, add_bos=False, special=False)
            assert len(tokens) == 1, (char, tokens)
            token = self._tokens[char] = tokens[0]
        return token

    def accepts(self, grammar: str, text: str) -> bool:
        sampler = L.llama_sampler_init_grammar(self._vocab._vocab, grammar.encode(), b"root")
        assert sampler, grammar
        try:
            data = (L.llama_token_data * 1)()
            candidates = L.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)

            def allowed(token: int) -> bool:
                data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
                L.llama_sampler_apply(sampler, ctypes.byref(candidates))
                return math.isfinite(data[0].logit)

            for char in text:
                token = self._token(char)
                if not allowed(token):
                    return False
                L.llama_sampler_accept(sampler, token)
            return allowed(self._vocab.eos)
        finally:
            L.llama_sampler_free(sampler)


def schema_grammar(schema: dict[str, Any]) -> tuple[str, SafeConverter]:
    """The GBNF of one value of ``schema`` (the converter, to read what it left out)."""
    converter = SafeConverter()
    converter.visit(schema, "")
    return converter.format_grammar(), converter

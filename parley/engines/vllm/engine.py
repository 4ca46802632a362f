"""The vLLM engine: parley's rendering and output protocol, vLLM's decoding.

At start it reads the upstream's ``/v1/models`` (the served model's id and
``max_model_len``, the context size), loads the GGUF's vocabulary (the
option ``model``: vLLM serves safetensors, so parley cannot find the GGUF
itself) and checks that vLLM tokenizes a probe text to the same ids, since
parley counts and vLLM decodes with them. A generation sends the token ids
to ``/v1/completions`` with every sampler pinned to the API's meaning (the
model's ``generation_config.json`` would otherwise set vLLM's defaults) and
the tool grammar as a structured output: the GBNF itself when the call is
forced, an xgrammar ``structural_tag`` of ``triggered_tags`` for
``tool_choice: auto`` (free text until the call syntax's trigger, then the
grammar; llama.cpp's lazy grammar). Prefix-cache reuse comes from the final
usage chunk (``prompt_tokens_details.cached_tokens``, with vLLM's
``--enable-prompt-tokens-details``); a request parley ends early (a stop
sequence, a duplicate call) closes its stream before that chunk, so it
reports no cache figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.engines.base import SamplingParams
from parley.engines.llamacpp.model_file import read_template
from parley.engines.llamacpp.output import Grammar
from parley.engines.llamacpp.vocab import LlamaVocab
from parley.engines.upstream.backends import Attempt
from parley.engines.upstream.http import upstream_error
from parley.engines.upstream.options import UpstreamOptions, read_options
from parley.engines.upstream.tokens import (
    End,
    Fit,
    Piece,
    Report,
    TokensEngine,
    tokenizer_probe,
)
from parley.engines.vllm.client import VllmClient
from parley.errors import ModelLoadError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.vllm")

# Requests parley sends at once when the option says 0: vLLM batches and queues
# by itself, and does not say its --max-num-seqs.
DEFAULT_CONCURRENCY = 16


class VllmEngine(TokensEngine[VllmClient]):
    def __init__(self, clients: Sequence[VllmClient], options: VllmOptions) -> None:
        super().__init__(options, "vllm", clients)
        self._options: VllmOptions = options
        self._served = ""  # vLLM's id of the model, sent in every request

    async def start(self) -> None:
        import anyio

        up = await self._reach()
        path = self._gguf()
        self._vocab = await anyio.to_thread.run_sync(LlamaVocab, path)
        n_ctx = (await self._fits(up)).context  # each checked: the model, its tokenizer
        self._slots.size = self._options.concurrency or DEFAULT_CONCURRENCY * len(self._clients)
        model_id = self._serve(path, n_ctx, "vLLM", read_template(self._options.chat_template))
        log.info(
            "upstream ready",
            extra={
                "model": model_id,
                "upstream": ",".join(c.url for c in self._clients),
                "n_ctx": n_ctx,
            },
        )
        self._watch_backends()

    async def _fit(self, client: VllmClient) -> Fit:
        """The served model's context; it must be the one the other backends serve
        (the first one up picks it) and tokenize as the GGUF does."""
        models = await client.models()
        wanted = self._options.served_model or self._served or None
        chosen = [m for m in models if wanted in (None, m.get("id"))]
        if not chosen:
            served = ", ".join(str(m.get("id")) for m in models) or "none"
            raise ModelLoadError(
                f"vLLM at {client.url} does not serve {wanted!r} (it serves: {served})"
            )
        model = chosen[0]
        self._served = str(model["id"])
        n_ctx = int(model.get("max_model_len") or 0)
        if n_ctx <= 0:
            raise ModelLoadError(f"{client.url}/v1/models gives no max_model_len: is it vLLM?")
        assert self._vocab is not None
        await self._check_tokenizer(client, self._vocab, self._gguf())
        return Fit(n_ctx, DEFAULT_CONCURRENCY)

    def _gguf(self) -> Path:
        if not self._options.model:
            raise ModelLoadError(
                "the vllm engine renders and counts prompts with the served model's GGUF "
                "vocabulary: give it with --engine-opt model=PATH"
            )
        return Path(self._options.model).expanduser()

    async def _check_tokenizer(self, client: VllmClient, vocab: LlamaVocab, path: Path) -> None:
        """Refuse a backend whose tokenizer is not the GGUF's: counts would lie."""
        probe, ours = tokenizer_probe(vocab)
        theirs = await client.tokenize(self._served, probe)
        if theirs != ours:
            raise ModelLoadError(
                f"vLLM at {client.url} tokenizes differently from {path.name} "
                f"({theirs[:12]} against {ours[:12]}): serve a model with that GGUF's tokenizer"
            )

    def _pieces(
        self,
        tokens: list[int],
        max_tokens: int,
        params: SamplingParams,
        grammar: Grammar | None,
        report: Report,
    ) -> AsyncGenerator[Piece, None]:
        body = _body(self._served, tokens, max_tokens, params, grammar)
        return self._route(report, lambda client, attempt: _read(client, attempt, body, report))


async def _read(
    client: VllmClient, attempt: Attempt, body: dict[str, Any], report: Report
) -> AsyncGenerator[Piece, None]:
    """One ``/v1/completions`` on one backend, as ``Piece`` values."""
    last: Piece | None = None  # held until the usage chunk that follows it
    answer = client.completions(body, on_answer=report.accepted, attempt=attempt)
    async with contextlib.aclosing(answer) as chunks:
        async for chunk in chunks:
            usage = chunk.get("usage")
            if usage:
                details = usage.get("prompt_tokens_details") or {}
                if details.get("cached_tokens") is not None:
                    report.cached = int(details["cached_tokens"])
            for choice in chunk.get("choices") or []:
                text, ids = choice.get("text") or "", list(choice.get("token_ids") or [])
                reason = choice.get("finish_reason")
                if reason is None:
                    yield Piece(text, ids)
                    continue
                end: End
                if reason == "stop":  # the end-of-generation token, last in its ids
                    end, ids = "eos", ids[:-1]
                elif reason == "length":
                    end = "limit"
                else:
                    raise upstream_error(
                        f"the generation ended with finish_reason {reason!r}",
                        "POST /v1/completions",
                        client.url,
                    )
                last = Piece(text, ids, end)
    if last is not None:
        yield last


def _body(
    model: str, tokens: list[int], max_tokens: int, params: SamplingParams, grammar: Grammar | None
) -> dict[str, Any]:
    """A ``/v1/completions`` request with every sampler pinned to the API's meaning."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": tokens,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "temperature": params.temperature,
        "top_p": 1.0 if params.top_p is None else params.top_p,
        "top_k": params.top_k or 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.tenant:  # tenants never share cached prefixes, nor time each other's
        body["cache_salt"] = cache_salt(params.tenant)
    if grammar is not None:
        body["structured_outputs"] = structured_output(grammar)
    return body


def cache_salt(tenant: str) -> str:
    """vLLM's ``cache_salt`` for a key's scope: unpredictable without the key
    (the scope is a hash of it), 64 hex characters (vLLM takes at most 128)."""
    return hashlib.sha256(b"parley cache_salt\0" + tenant.encode()).hexdigest()


def structured_output(grammar: Grammar) -> dict[str, str]:
    """parley's grammar as vLLM's ``structured_outputs``: xgrammar takes the
    GBNF as it is; a lazy grammar becomes a structural tag whose content is the
    grammar after its opening, woken by its trigger, the generation ending after
    it (as under llama.cpp's lazy grammar)."""
    if grammar.lazy_trigger is None:
        return {"grammar": grammar.text}
    root, _, rules = grammar.text.partition("\n")
    assert root == f"{grammar.root} ::= {json.dumps(grammar.opening)} lazy-rest", (
        "grammar.py's lazy root: the opening, then lazy-rest"
    )
    tag = {
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": [grammar.lazy_trigger],
            "tags": [
                {
                    "type": "tag",
                    "begin": grammar.opening,
                    "content": {"type": "grammar", "grammar": f"root ::= lazy-rest\n{rules}"},
                    "end": "",
                }
            ],
            "stop_after_first": True,
        },
    }
    return {"structural_tag": json.dumps(tag)}


@dataclass(frozen=True)
class VllmOptions(UpstreamOptions):
    """The vllm engine's options (``[engines.vllm]``, ``--engine-opt``). ``model``
    (the GGUF whose vocabulary renders here) is required; ``concurrency`` 0 is
    16 requests at once; ``served_model`` picks one of vLLM's models (default:
    the first it lists)."""

    served_model: str | None = None


def from_settings(settings: Settings) -> VllmEngine:
    o = read_options(settings, "vllm", VllmOptions, "http://127.0.0.1:8000")
    clients = [
        VllmClient(
            url,
            api_key=o.api_key,
            timeout=o.timeout,
            connect_timeout=o.connect_timeout,
            retries=o.retries if len(o.url) == 1 else 0,  # several: the pool fails over
        )
        for url in o.url
    ]
    return VllmEngine(clients, o)

"""The llama-server engine: parley's rendering and output protocol, llama-server's decoding.

At start it reads the upstream's ``/props`` (context per slot, slots, chat
template, model path) and loads the GGUF's vocabulary (the option ``model``,
else the upstream's ``model_path`` when it is readable here). ``prepare``
renders and counts exactly as the embedded engine does (``llamacpp.render``).
A generation is one task on the event loop (``TaskGeneration``) that sends
the token ids to ``/completion`` with the tool grammar and every sampler
pinned (llama-server's defaults are not the API's: temperature 0.8, top-k
40, min-p 0.05), and feeds what comes back through ``ToolCallParser``.
Stop sequences are matched by parley (llama-server does not say which one
matched on every path) and end the upstream request. A thinking section
over its budget, or ended by the model's end of generation, is closed by
parley: the upstream request ends and a new one continues from the prompt,
the tokens written and the closing marker (llama-server's prompt cache
makes that a few tokens' prefill).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.engines.base import SamplingParams
from parley.engines.llamacpp.model_file import read_template
from parley.engines.llamacpp.output import Grammar
from parley.engines.llamacpp.vocab import LlamaVocab
from parley.engines.llamaserver.client import LlamaServerClient
from parley.engines.upstream.backends import Attempt
from parley.engines.upstream.options import UpstreamOptions, read_options
from parley.engines.upstream.tokens import (
    End,
    Fit,
    Piece,
    Report,
    TokensEngine,
    tokenizer_probe,
)
from parley.errors import ModelLoadError

if TYPE_CHECKING:
    from parley.config import Settings

log = logging.getLogger("parley.engine.llamaserver")

# llama.cpp's grammar trigger kinds (common/chat.h): a regex anywhere in the output.
TRIGGER_PATTERN = 2


class LlamaServerEngine(TokensEngine[LlamaServerClient]):
    def __init__(self, clients: Sequence[LlamaServerClient], options: LlamaServerOptions) -> None:
        super().__init__(options, "llama-server", clients)
        self._options: LlamaServerOptions = options

    async def start(self) -> None:
        import anyio

        up = await self._reach()
        first = up[0].client
        props = await first.props()
        path = self._gguf(props, first.url)
        self._vocab = await anyio.to_thread.run_sync(LlamaVocab, path)
        fit = await self._fits(up)  # each checked: its context, its tokenizer
        n_ctx, slots = fit.context, fit.slots
        self._slots.size = self._options.concurrency or slots
        template = read_template(self._options.chat_template) or props.get("chat_template") or None
        model_id = self._serve(path, n_ctx, "llama-server", template)
        log.info(
            "upstream ready",
            extra={
                "model": model_id,
                "upstream": ",".join(c.url for c in self._clients),
                "n_ctx": n_ctx,
                "slots": slots,
                "build": props.get("build_info"),
            },
        )
        self._watch_backends()

    async def _fit(self, client: LlamaServerClient) -> Fit:
        props = await client.props()
        settings = props.get("default_generation_settings") or {}
        n_ctx = int(settings.get("n_ctx") or 0)
        if n_ctx <= 0:
            raise ModelLoadError(f"{client.url}/props gives no context size: is it llama-server?")
        assert self._vocab is not None, "loaded before the backends are checked"
        probe, ours = tokenizer_probe(self._vocab)
        theirs = await client.tokenize(probe)
        if theirs != ours:
            raise ModelLoadError(
                f"llama-server at {client.url} tokenizes differently from the GGUF parley "
                f"renders with ({theirs[:12]} against {ours[:12]}): serve the same model"
            )
        return Fit(n_ctx, int(props.get("total_slots") or 1))

    def _gguf(self, props: dict[str, Any], url: str) -> Path:
        if self._options.model:
            return Path(self._options.model).expanduser()
        served = props.get("model_path")
        if served and Path(served).is_file():
            return Path(served)
        raise ModelLoadError(
            f"llama-server at {url} serves {served or 'a model'}, which is not "
            "readable here: give the same GGUF file with --engine-opt model=PATH (parley "
            "renders and counts prompts with its vocabulary)"
        )

    def _pieces(
        self,
        tokens: list[int],
        max_tokens: int,
        params: SamplingParams,
        grammar: Grammar | None,
        report: Report,
    ) -> AsyncGenerator[Piece, None]:
        body = _body(tokens, max_tokens, params, grammar)
        if report.breakpoints:
            # Every chunk then carries llama-server's timings, the first one how
            # much of the prompt came from its cache (the last one says it too,
            # but parley may close the stream before it: a stop sequence). Without
            # breakpoints that figure changes no usage: not asked for.
            body["timings_per_token"] = True
        return self._route(report, lambda client, attempt: _read(client, attempt, body, report))


async def _read(
    client: LlamaServerClient, attempt: Attempt, body: dict[str, Any], report: Report
) -> AsyncGenerator[Piece, None]:
    """One ``/completion`` on one backend, as ``Piece`` values."""
    answer = client.completion(body, on_answer=report.accepted, attempt=attempt)
    async with contextlib.aclosing(answer) as chunks:
        async for chunk in chunks:
            if report.cached is None and "timings" in chunk:  # how much of the prompt was cached
                report.cached = int(chunk["timings"].get("cache_n") or 0)
            end: End | None = None
            if chunk.get("stop"):
                end = "eos" if chunk.get("stop_type") == "eos" else "limit"
            yield Piece(chunk.get("content") or "", chunk.get("tokens") or [], end)


def _body(
    tokens: list[int], n_predict: int, params: SamplingParams, grammar: Grammar | None
) -> dict[str, Any]:
    """A ``/completion`` request with every sampler pinned to the API's meaning."""
    body: dict[str, Any] = {
        "prompt": tokens,
        "n_predict": n_predict,
        "stream": True,
        "cache_prompt": True,
        "return_tokens": True,
        "temperature": params.temperature,
        "top_k": params.top_k or 0,
        "top_p": 1.0 if params.top_p is None else params.top_p,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "samplers": ["top_k", "top_p", "temperature"],
        "seed": -1 if params.seed is None else params.seed & 0xFFFFFFFF,
    }
    if grammar is not None:
        body["grammar"] = grammar.text
        if grammar.lazy_trigger is not None:
            body["grammar_lazy"] = True
            body["grammar_triggers"] = [
                {"type": TRIGGER_PATTERN, "value": re.escape(grammar.lazy_trigger)}
            ]
    return body


@dataclass(frozen=True)
class LlamaServerOptions(UpstreamOptions):
    """The llama-server engine's options (``[engines.llamaserver]``, ``--engine-opt``);
    ``concurrency`` 0 is the upstream's slots."""


def from_settings(settings: Settings) -> LlamaServerEngine:
    o = read_options(settings, "llamaserver", LlamaServerOptions, "http://127.0.0.1:8080")
    clients = [
        LlamaServerClient(
            url,
            api_key=o.api_key,
            timeout=o.timeout,
            connect_timeout=o.connect_timeout,
            retries=o.retries if len(o.url) == 1 else 0,  # several: the pool fails over
        )
        for url in o.url
    ]
    return LlamaServerEngine(clients, o)

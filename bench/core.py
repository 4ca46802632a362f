"""Core benchmark: parley over HTTP vs. the same model driven directly.

One run, on the embedded model, same settings on both sides (context, KV
cache type, threads):

* decode tokens/s of one stream through parley's SSE over HTTP, divided by
  the same greedy decode through llama-cpp-python in-process (target >= 0.95);
* time-to-first-token overhead of parley over the direct engine;
* count_tokens median latency for a ~2,500-token request;
* RSS of ``parley serve`` with the default model after warm-up (target < 400 MB).

Runs alternate between the two sides so machine noise hits both alike.
Results go to bench/RESULTS.md (section "core").
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx
import psutil

from bench.common import Section, serve, write_section
from parley.engines.llamacpp import embedded_model_path
from parley.engines.llamacpp.native import GGML_TYPE_Q8_0

REPS = int(os.environ.get("BENCH_REPS", "7"))
MAX_TOKENS = int(os.environ.get("BENCH_TOKENS", "200"))
N_CTX = 8192
THREADS = os.cpu_count() or 1
MODEL = "smollm2-135m-instruct"


@dataclass
class Run:
    ttft: float  # seconds from request to first token
    tokens: int  # tokens after the first
    decode: float  # seconds from first to last token

    @property
    def rate(self) -> float:
        return self.tokens / self.decode if self.decode > 0 else 0.0


def prompt(rep: int) -> str:
    # A different opening each rep, so neither side gets a warm prefix cache.
    return f"Story {rep}: write a very long story about a cat who sails around the world."


def direct_run(llm: Any, rep: int) -> Run:
    from parley.conversation import Conversation, TextPart, Turn
    from parley.engines.llamacpp.chat_template import ChatTemplate

    template = ChatTemplate(llm.metadata.get("tokenizer.chat_template"), bos_token="", eos_token="")
    conv = Conversation(system=None, turns=(Turn("user", (TextPart(prompt(rep)),)),))
    tokens = llm.tokenize(template.render(conv).encode(), add_bos=False, special=True)
    import llama_cpp

    vocab = llm._model.vocab
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    for token in llm.generate(tokens, temp=0.0, top_k=0, top_p=1.0, min_p=0.0):
        now = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.detokenize([token])
        count += 1
        if count == 1:
            first = now
        last = now
        if count >= MAX_TOKENS:
            break
    return Run(first - started, count - 1, last - first)


def parley_run(client: httpx.Client, url: str, rep: int) -> Run:
    body = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": True,
        "messages": [{"role": "user", "content": prompt(rep)}],
    }
    started = time.perf_counter()
    first = last = 0.0
    output_tokens = 0
    with client.stream("POST", url + "/v1/messages", json=body) as response:
        response.raise_for_status()
        kind = ""
        # The client does as little as it can per event (the direct side has no
        # client at all): it parses only the final usage.
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif kind == "content_block_delta" and line.startswith("data: "):
                last = time.perf_counter()
                first = first or last
            elif kind == "message_delta" and line.startswith("data: "):
                output_tokens = json.loads(line[6:])["usage"]["output_tokens"]
    # Text deltas can hold back a token (stop sequences, UTF-8); count tokens.
    return Run(first - started, max(0, output_tokens - 1), last - first)


def count_latency(client: httpx.Client, url: str) -> tuple[float, int]:
    words = " ".join(f"word{i % 97}" for i in range(850))
    body = {"model": MODEL, "messages": [{"role": "user", "content": words}]}
    n = client.post(url + "/v1/messages/count_tokens", json=body).json()["input_tokens"]
    samples = []
    for _ in range(50):
        started = time.perf_counter()
        client.post(url + "/v1/messages/count_tokens", json=body).raise_for_status()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), n


def main() -> Section:
    import llama_cpp

    with serve([]) as (url, pid):
        client = httpx.Client(timeout=300)
        parley_run(client, url, -1)  # warm-up
        rss_mb = psutil.Process(pid).memory_info().rss / 1e6
        llm = llama_cpp.Llama(
            str(embedded_model_path()),
            n_ctx=N_CTX,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            flash_attn=True,
            type_k=GGML_TYPE_Q8_0,
            type_v=GGML_TYPE_Q8_0,
            verbose=False,
        )
        direct_run(llm, -1)  # warm-up
        direct: list[Run] = []
        served: list[Run] = []
        for rep in range(REPS):
            direct.append(direct_run(llm, rep))
            served.append(parley_run(client, url, rep))
        llm.close()
        count_median, count_n = count_latency(client, url)
        rss_after_mb = psutil.Process(pid).memory_info().rss / 1e6

    d_rate = statistics.median(r.rate for r in direct)
    p_rate = statistics.median(r.rate for r in served)
    d_ttft = statistics.median(r.ttft for r in direct)
    p_ttft = statistics.median(r.ttft for r in served)
    ratio = p_rate / d_rate
    rows = [
        ("decode tokens/s, direct llama-cpp-python", f"{d_rate:.1f}", ""),
        ("decode tokens/s, parley (HTTP SSE)", f"{p_rate:.1f}", ""),
        ("**parley / direct decode ratio**", f"**{ratio:.3f}**", "≥ 0.95"),
        ("time to first token, direct (ms)", f"{d_ttft * 1000:.1f}", ""),
        ("time to first token, parley (ms)", f"{p_ttft * 1000:.1f}", ""),
        ("**TTFT overhead of parley (ms)**", f"**{(p_ttft - d_ttft) * 1000:.1f}**", ""),
        (
            f"count_tokens median latency, {count_n}-token request (ms)",
            f"{count_median * 1000:.2f}",
            "",
        ),
        ("RSS of `parley serve` after warm-up (MB)", f"{rss_mb:.0f}", "< 400"),
        ("RSS of `parley serve` at the end (MB)", f"{rss_after_mb:.0f}", "< 400"),
    ]
    verdicts = {
        "decode ratio ≥ 0.95": ratio >= 0.95,
        "RSS < 400 MB": max(rss_mb, rss_after_mb) < 400,
    }
    notes = (
        f"{REPS} alternating runs a side, {MAX_TOKENS} max tokens, greedy, medians. "
        f"Model SmolLM2-135M-Instruct Q4_1, n_ctx {N_CTX}, q8_0 KV cache, flash attention, "
        f"{THREADS} threads, {platform.machine()} / Python {platform.python_version()}."
    )
    return Section("core", "Core: parley vs. direct llama-cpp-python", rows, verdicts, notes)


if __name__ == "__main__":
    write_section(main())

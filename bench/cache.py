"""Prompt caching: time to first token with a ~3,000-token cached prefix, cold vs. warm.

One parley server (embedded model, one slot, so a warm request must restore
its prefix from the prompt cache rather than find it still in the slot).
Cold requests carry a system prompt no request used before (a fresh opening
line, so nothing is shared); warm ones repeat a system prompt written to the
cache earlier, with a new question after it. Runs alternate; other work runs
between them and takes the slot. Target: warm ≥ 5x faster to first token.
Results go to bench/RESULTS.md (section "cache").
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import httpx

from bench.common import Section, serve, write_section

MODEL = "smollm2-135m-instruct"
REPS = int(os.environ.get("BENCH_REPS", "3"))
TOPICS = ["ships", "birds", "rivers", "clouds", "maps", "stones", "trains", "bread", "lamps"]
BODY = " ".join(
    f"Rule {i}: when the user asks about {TOPICS[i % len(TOPICS)]}, answer briefly and politely, "
    f"with one example drawn from everyday life, number {i}."
    for i in range(120)
)


def system(opening: str) -> list[dict[str, Any]]:
    text = f"{opening}\n{BODY}"
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def first_token(client: httpx.Client, url: str, opening: str, question: str) -> tuple[float, dict]:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": True,
        "system": system(opening),
        "messages": [{"role": "user", "content": question}],
    }
    started = time.perf_counter()
    ttft = 0.0
    usage: dict[str, Any] = {}
    with client.stream("POST", url + "/v1/messages", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "message_start":
                usage = event["message"]["usage"]
            elif event["type"] in ("content_block_start", "content_block_delta") and not ttft:
                ttft = time.perf_counter() - started
    return ttft, usage


def main() -> Section:
    with serve(["--parallel", "1"]) as (url, _):
        client = httpx.Client(timeout=600)
        warm_opening = "You are the shared assistant."
        _, written = first_token(client, url, warm_opening, "Hello.")
        cold: list[float] = []
        warm: list[float] = []
        prefix = 0
        for rep in range(REPS):
            ttft, usage = first_token(client, url, f"You are assistant number {rep}.", "Hi.")
            assert usage["cache_read_input_tokens"] == 0, usage
            cold.append(ttft)
            ttft, usage = first_token(client, url, warm_opening, f"Question {rep}: ships?")
            prefix = usage["cache_read_input_tokens"]
            assert prefix == written["cache_creation_input_tokens"] > 0, usage
            warm.append(ttft)
        stats = client.get(url + "/parley/stats").json()[MODEL]
    c, w = statistics.median(cold), statistics.median(warm)
    rows = [
        ("cached prefix (tokens, `cache_read_input_tokens`)", str(prefix), ""),
        ("time to first token, cold (ms)", f"{c * 1000:.0f}", ""),
        ("time to first token, warm (ms)", f"{w * 1000:.0f}", ""),
        ("**cold ÷ warm**", f"**{c / w:.1f}x**", "≥ 5x"),
        (
            "prompt-cache restores / snapshots",
            f"{stats['cache_restores']} / {stats['cache_snapshots']}",
            "",
        ),
    ]
    notes = (
        f"{REPS} alternating runs a side, medians, `--parallel 1` so each warm request restores "
        "its prefix from the prompt cache (the cold request before it took the only slot). "
        "Embedded model, n_ctx 8192, q8_0 KV, 2 threads."
    )
    verdicts = {"warm ≥ 5x faster to first token": c / w >= 5}
    return Section(
        "cache", "Prompt caching: cold vs. warm time to first token", rows, verdicts, notes
    )


if __name__ == "__main__":
    write_section(main())

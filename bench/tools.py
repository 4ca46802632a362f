"""Grammar-constrained decoding vs. free decoding, on the embedded model.

Both sides stream the same prompt through parley with the same output
budget: free text (``tool_choice: none``) vs. a forced tool call whose
schema is one long string, so the grammar constrains every token. The
ratio of decode tokens/s is the grammar's cost (target: >= 0.8).
Results go to bench/RESULTS.md (section "tools").
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
REPS = int(os.environ.get("BENCH_REPS", "5"))
MAX_TOKENS = 150
TOOL = {
    "name": "write_story",
    "description": "Write a story.",
    "input_schema": {
        "type": "object",
        "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
        "required": ["title", "story"],
    },
}


def decode_rate(client: httpx.Client, url: str, rep: int, constrained: bool) -> float:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": True,
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "write_story", "disable_parallel_tool_use": True}
        if constrained
        else {"type": "none"},
        "messages": [{"role": "user", "content": f"Story {rep}: write a long story about a cat."}],
    }
    first = last = 0.0
    tokens = 0
    with client.stream("POST", url + "/v1/messages", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event["type"] in ("content_block_delta", "content_block_start"):
                first = first or now
                last = now
            elif event["type"] == "message_delta":
                tokens = event["usage"]["output_tokens"]
    return (tokens - 1) / (last - first)


def main() -> Section:
    with serve([]) as (url, _):
        client = httpx.Client(timeout=300)
        decode_rate(client, url, -1, True)
        free, bound = [], []
        for rep in range(REPS):
            free.append(decode_rate(client, url, rep, False))
            bound.append(decode_rate(client, url, rep, True))
    f, b = statistics.median(free), statistics.median(bound)
    rows = [
        ("decode tokens/s, free text", f"{f:.1f}", ""),
        ("decode tokens/s, grammar-constrained tool input", f"{b:.1f}", ""),
        ("**constrained / free**", f"**{b / f:.3f}**", "≥ 0.8"),
    ]
    notes = (
        f"{REPS} alternating runs a side, {MAX_TOKENS} max tokens, greedy, medians; "
        "the same prompt and tools, tool_choice none vs. a forced call."
    )
    verdicts = {"constrained ≥ 0.8 of free": b / f >= 0.8}
    return Section(
        "tools", "Tool calls: grammar-constrained vs. free decoding", rows, verdicts, notes
    )


if __name__ == "__main__":
    write_section(main())

"""Grammar-constrained decoding vs. free decoding, on the embedded model.

Every side streams the same prompt through parley with the same output
budget: free text (``tool_choice: none``) vs. a forced tool call whose
schema is one long string, so the grammar constrains every token, and vs.
the same schema as a structured output (``output_config.format``). The
ratio of decode tokens/s is the grammar's cost (target: >= 0.8), greedy and
at the API's default temperature (1.0).
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
        # The story cannot end within MAX_TOKENS, so every side decodes to the
        # budget and the rates compare steady decoding, not short answers.
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "story": {"type": "string", "minLength": 2000},
        },
        "required": ["title", "story"],
    },
}


MODES = ("free", "tool", "format")


def decode_rate(
    client: httpx.Client, url: str, rep: int, mode: str, temperature: float = 0.0
) -> float:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": temperature,
        "stream": True,
        "messages": [{"role": "user", "content": f"Story {rep}: write a long story about a cat."}],
    }
    if mode == "format":
        body["output_config"] = {"format": {"type": "json_schema", "schema": TOOL["input_schema"]}}
    else:
        body["tools"] = [TOOL]
        body["tool_choice"] = (
            {"type": "tool", "name": "write_story", "disable_parallel_tool_use": True}
            if mode == "tool"
            else {"type": "none"}
        )
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
    rates: dict[tuple[str, float], list[float]] = {}
    with serve([]) as (url, _):
        client = httpx.Client(timeout=300)
        for mode in MODES:
            decode_rate(client, url, -1, mode)  # the grammar's first build, off the clock
        for temperature in (0.0, 1.0):
            for rep in range(REPS):
                for mode in MODES:
                    rate = decode_rate(client, url, rep, mode, temperature)
                    rates.setdefault((mode, temperature), []).append(rate)
    median = {key: statistics.median(values) for key, values in rates.items()}
    rows = []
    verdicts = {}
    for temperature in (0.0, 1.0):
        label = "greedy" if temperature == 0.0 else "temperature 1.0"
        f = median[("free", temperature)]
        t, o = median[("tool", temperature)], median[("format", temperature)]
        rows += [
            (f"decode tokens/s, free text ({label})", f"{f:.1f}", ""),
            (f"decode tokens/s, forced tool input ({label})", f"{t:.1f}", ""),
            (f"decode tokens/s, output_config.format ({label})", f"{o:.1f}", ""),
            (f"**tool / free** ({label})", f"**{t / f:.3f}**", "≥ 0.8"),
            (f"**format / free** ({label})", f"**{o / f:.3f}**", "≥ 0.8"),
        ]
        verdicts[f"tool input ≥ 0.8 of free ({label})"] = t / f >= 0.8
        verdicts[f"structured output ≥ 0.8 of free ({label})"] = o / f >= 0.8
    notes = (
        f"{REPS} alternating runs a side, {MAX_TOKENS} max tokens, medians; the same prompt, "
        "tool_choice none vs. a forced call vs. the tool's schema as output_config.format "
        "(a story of at least 2,000 characters, so every side decodes to the budget and the "
        "grammar constrains every token)."
    )
    return Section(
        "tools", "Tool calls and structured outputs: grammar-constrained vs. free decoding",
        rows, verdicts, notes,
    )  # fmt: skip


if __name__ == "__main__":
    write_section(main())

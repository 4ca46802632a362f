"""count_tokens with context-management edits vs. without, on the embedded model.

A 30-turn tool conversation (30 calls of one tool, each answered by a result
of some 60 tokens) is counted as sent, and with a ``clear_tool_uses_20250919``
edit that clears all but the last 3 results (so parley renders and counts it
before and after the edit), and with ``clear_thinking`` and ``clear_tool_uses``
both (thinking on). Target: the edited count at most 2x the plain one.
Results go to bench/RESULTS.md (section "context").
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import httpx

from bench.common import Section, serve, write_section

MODEL = "smollm2-135m-instruct"
REPS = int(os.environ.get("BENCH_REPS", "15"))
TURNS = 30
TOOL = {
    "name": "read_file",
    "description": "Read a file.",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}
CLEAR = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1}}
HEADERS = {
    "x-api-key": "bench",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "context-management-2025-06-27",
}


def conversation(rep: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Task {rep}: read the files."}]
    for turn in range(TURNS):
        call = f"toolu_{rep}_{turn}"
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"Reading file {turn}."},
                    {"type": "tool_use", "id": call, "name": "read_file",
                     "input": {"path": f"src/module_{turn}.py"}},
                ],
            }
        )  # fmt: skip
        body = " ".join(f"line {k} of module {turn}: value = {k * turn}" for k in range(8))
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call,
                                          "content": body}]}
        )  # fmt: skip
    messages.append({"role": "user", "content": "Summarise what you read."})
    return _merged(messages)


def _merged(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive user messages as one (the last result and the question)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"] == "user":
            previous = out[-1]["content"]
            out[-1]["content"] = [*previous, {"type": "text", "text": message["content"]}]
        else:
            out.append(message)
    return out


def count(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(url + "/v1/messages/count_tokens?beta=true", json=body)
    took = time.perf_counter() - started
    response.raise_for_status()
    return took, response.json()


def main() -> Section:
    kinds: dict[str, Any] = {
        "plain": {},
        "clear_tool_uses": {"context_management": {"edits": [CLEAR]}},
        "clear_thinking + clear_tool_uses": {
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "context_management": {
                "edits": [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns",
                                                                        "value": 1}}, CLEAR]
            },
        },
    }  # fmt: skip
    took: dict[str, list[float]] = {k: [] for k in kinds}
    figures: dict[str, dict[str, Any]] = {}
    with serve([]) as (url, _):
        client = httpx.Client(timeout=300, headers=HEADERS)
        for rep in range(REPS + 1):
            messages = conversation(rep)
            for kind, extra in kinds.items():
                body = {"model": MODEL, "messages": messages, "tools": [TOOL], **extra}
                seconds, answer = count(client, url, body)
                if rep:  # the first round warms the tokenizer and the code paths
                    took[kind].append(seconds)
                figures[kind] = answer
    median = {k: statistics.median(v) * 1000 for k, v in took.items()}
    base = median["plain"]
    rows = [("count_tokens ms, as sent", f"{base:.1f}", "")]
    verdicts = {}
    for kind in list(kinds)[1:]:
        ratio = median[kind] / base
        original = figures[kind].get("context_management", {}).get("original_input_tokens")
        rows.append((f"count_tokens ms, {kind}", f"{median[kind]:.1f}", ""))
        rows.append((f"**{kind} / as sent**", f"**{ratio:.2f}**", "≤ 2"))
        rows.append(
            (f"input tokens, {kind} (original)",
             f"{figures[kind]['input_tokens']} ({original})", "")
        )  # fmt: skip
        verdicts[f"{kind} ≤ 2x as sent"] = ratio <= 2.0
    notes = (
        f"{TURNS}-turn tool conversation ({figures['plain']['input_tokens']} tokens as sent), "
        f"{REPS} rounds after one warm-up, medians, one client, loopback; each edit clears "
        "all but the last 3 tool results."
    )
    return Section("context", "count_tokens with context-management edits", rows, verdicts, notes)


if __name__ == "__main__":
    write_section(main())

"""Record the conformance corpus: requests, parley's responses and SSE transcripts.

    .venv/bin/python -m tests.conformance.record

Starts a scripted parley (tests/data/rules.yaml), sends each case of
``CASES`` once without and once with streaming, and writes
``tests/conformance/<case>.json``: the request, the JSON response (or error)
and every SSE event in order. Ids and signatures are replaced by
placeholders. The files were checked by hand against the protocol notes and
the SDK's types; tests/test_conformance.py replays them. Re-record only when
a change of the wire format is intended, and check the diff by hand.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RULES, start_server, stop_server

HERE = Path(__file__).parent
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Time in a zone",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "scripted",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


CASES: dict[str, dict[str, Any]] = {
    "text": body("count to ten"),
    "system_prompt": body("hello", system="You are a pirate."),
    "max_tokens": body("count to ten", max_tokens=3),
    "stop_sequence": body("count to ten", stop_sequences=["five"]),
    "tool_use": body("weather in Paris", tools=[WEATHER]),
    "two_tools": body("two tools please", tools=[WEATHER, TIME]),
    "thinking": body(
        "think about this", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}
    ),
    "error_midway": body("fail midway"),
    "custom_usage": body("custom usage"),
    "tool_result_history": {
        "model": "scripted",
        "max_tokens": 100,
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "weather in Paris"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "Sunny"}
                ],
            },
        ],
    },
}

_IDS = re.compile(r"\b(msg|toolu|req)_01[0-9A-Za-z]+")


def normalise(value: Any) -> Any:
    """Ids and signatures, which differ every run, become placeholders."""
    if isinstance(value, dict):
        return {
            k: ("SIGNATURE" if k == "signature" and v else normalise(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return _IDS.sub(lambda m: f"{m.group(1)}_ID", value)
    return value


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        events.append({"event": fields["event"], "data": json.loads(fields["data"])})
    return events


def record(url: str, name: str, request: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers={"x-api-key": "k"}, timeout=60) as client:
        plain = client.post("/v1/messages", json=request)
        streamed = client.post("/v1/messages", json={**request, "stream": True})
    return normalise(
        {
            "request": request,
            "status": plain.status_code,
            "response": plain.json(),
            "stream_status": streamed.status_code,
            "stream": sse_events(streamed.text) if streamed.status_code == 200 else streamed.json(),
        }
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(["--engine", "scripted", "--script", str(RULES)], Path(tmp))
        try:
            for name, request in CASES.items():
                path = HERE / f"{name}.json"
                path.write_text(json.dumps(record(server.url, name, request), indent=1) + "\n")
                print(f"wrote {path}")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()

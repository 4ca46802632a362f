"""The conformance corpus: recorded requests, responses and SSE transcripts.

Each ``tests/conformance/*.json`` (written by ``tests/conformance/record.py``,
checked by hand against the protocol notes and the SDK's types) is replayed:

* every recorded event parses as the SDK's ``RawMessageStreamEvent``, and the
  SDK's own stream accumulator rebuilds exactly the recorded JSON response;
* the same request sent to parley now gives the same response and the same
  events, in the same order, with the same shapes (ids and signatures aside).

A change in event order, indices, deltas or usage fails here loudly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.conformance.record import normalise, record
from tests.conftest import Server

CORPUS = sorted((Path(__file__).parent / "conformance").glob("*.json"))
SDK_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 10


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_recorded_stream_rebuilds_the_recorded_response(path: Path) -> None:
    case = load(path)
    events = case["stream"]
    assert events[0]["event"] == "message_start"
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for item in events:
        assert item["event"] == item["data"]["type"]
        if item["event"] in ("ping", "error"):
            continue
        parsed = SDK_EVENT.validate_python(item["data"])
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_bufs)
    assert isinstance(snapshot, SDKMessage)
    if case["status"] == 200:
        assert events[-1]["event"] == "message_stop"
        rebuilt = json.loads(snapshot.model_dump_json(exclude_none=True))
        expected = json.loads(
            SDKMessage.model_validate(case["response"]).model_dump_json(exclude_none=True)
        )
        assert rebuilt == expected
    else:  # a failure after the stream began ends with one error event
        assert events[-1]["event"] == "error"
        assert events[-1]["data"]["error"] == case["response"]["error"]


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_parley_still_answers_as_recorded(scripted_server: Server, path: Path) -> None:
    case = load(path)
    now = record(scripted_server.url, path.stem, case["request"])
    assert normalise(now) == case

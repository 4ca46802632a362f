"""The engine-events → Anthropic-events state machine, without HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from parley.engines.base import (
    EngineEvent,
    Finished,
    TextChunk,
    ThinkingChunk,
    ToolCallStart,
    ToolInputChunk,
)
from parley.errors import EngineError
from parley.streaming.sse import encode
from parley.streaming.state import MessageState, StreamProtocolError
from parley.wire import events as ev

SDK_EVENT = TypeAdapter(RawMessageStreamEvent)


def check_invariants(events: list[ev.StreamEvent]) -> None:
    """The ordering rules of protocol-notes.md, checked on a finished stream."""
    kinds = [e.type for e in events if e.type != "ping"]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta"
    assert kinds.count("message_start") == kinds.count("message_delta") == 1
    open_index: int | None = None
    next_index = 0
    for event in events:
        if isinstance(event, ev.ContentBlockStart):
            assert open_index is None, "a block started while another was open"
            assert event.index == next_index, "indices must be contiguous from 0"
            open_index = event.index
            next_index += 1
        elif isinstance(event, ev.ContentBlockDelta):
            assert open_index == event.index, "delta outside its open block"
        elif isinstance(event, ev.ContentBlockStop):
            assert open_index == event.index
            open_index = None
        elif isinstance(event, ev.MessageDelta):
            assert open_index is None, "message_delta while a block is open"


def run(
    events: list[EngineEvent], *, redact: bool = False
) -> tuple[list[ev.StreamEvent], MessageState]:
    seal = (lambda text: f"sealed{len(text)}") if redact else None
    state = MessageState(
        "msg_test", "m", input_tokens=7, sign=lambda text: f"sig{len(text)}", seal=seal
    )
    out = state.start()
    for item in events:
        out.extend(state.feed(item))
    return out, state


def sdk_accumulate(events: list[ev.StreamEvent]) -> SDKMessage:
    """Feed our events, as JSON, through the SDK's own stream accumulator."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        if event.type == "ping":
            continue
        parsed = SDK_EVENT.validate_python(json.loads(event.model_dump_json()))
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_bufs)
    assert isinstance(snapshot, SDKMessage)
    return snapshot


text_chunks = st.text(min_size=0, max_size=6).map(TextChunk)
tool_calls = st.tuples(
    st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
    st.dictionaries(
        st.from_regex(r"[a-z]{1,5}", fullmatch=True),
        st.integers() | st.text(max_size=5),
        max_size=3,
    ),
    st.integers(min_value=1, max_value=6),
)


@st.composite
def engine_streams(draw: st.DrawFn) -> list[EngineEvent]:
    events: list[EngineEvent] = []
    if draw(st.booleans()):
        events.extend(ThinkingChunk(t) for t in draw(st.lists(st.text(max_size=6), max_size=4)))
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            events.extend(draw(st.lists(text_chunks, max_size=4)))
        else:
            name, payload, parts = draw(tool_calls)
            raw = json.dumps(payload)
            size = max(1, len(raw) // parts)
            events.append(ToolCallStart(f"toolu_{len(events)}", name))
            events.extend(ToolInputChunk(raw[i : i + size]) for i in range(0, len(raw), size))
    reason = draw(st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use"]))
    stop = "STOP" if reason == "stop_sequence" else None
    events.append(Finished(reason, draw(st.integers(0, 500)), stop))
    return events


@settings(max_examples=300, deadline=None)
@given(engine_streams(), st.booleans())
def test_any_engine_stream_gives_a_valid_event_sequence(
    stream: list[EngineEvent], redact: bool
) -> None:
    events, state = run(stream, redact=redact)
    check_invariants(events)
    final = state.message()
    # The SDK's accumulator rebuilds exactly the non-streamed message.
    rebuilt = sdk_accumulate(events)
    assert rebuilt.model_dump(exclude_none=True) == SDKMessage.model_validate(
        json.loads(final.model_dump_json())
    ).model_dump(exclude_none=True)
    text = "".join(e.text for e in stream if isinstance(e, TextChunk))
    assert "".join(b.text for b in final.content if b.type == "text") == text
    for i, event in enumerate(events):
        # A thinking block's signature arrives right before the block stops.
        if isinstance(event, ev.ContentBlockDelta) and event.delta.type == "signature_delta":
            assert isinstance(events[i + 1], ev.ContentBlockStop)
    for block in final.content:
        if block.type == "thinking":
            assert not redact and block.signature == f"sig{len(block.thinking)}"
        if block.type == "redacted_thinking":
            assert redact and block.data.startswith("sealed")


@settings(max_examples=200, deadline=None)
@given(engine_streams(), st.data())
def test_joining_chunks_between_hand_overs_keeps_the_message(
    stream: list[EngineEvent], data: st.DataObject
) -> None:
    # The scheduler hands events over in groups (--stream-interval-ms) and joins
    # adjacent same-kind chunks of a group: the message must not change.
    from parley.engines.llamacpp.delivery import joined as _joined

    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=5)))
    grouped: list[EngineEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        grouped.extend(_joined(stream[start:end]))
    assert len(grouped) <= len(stream)
    _, alone = run(stream)
    events, joined = run(grouped)
    check_invariants(events)
    assert joined.message() == alone.message()


def test_sse_encoding() -> None:
    events, _ = run([TextChunk("hi"), Finished("end_turn", 1)])
    raw = b"".join(encode(e) for e in events)
    frames = raw.split(b"\n\n")[:-1]
    assert len(frames) == len(events)
    for frame, event in zip(frames, events, strict=True):
        name, data = frame.split(b"\n")
        assert name == b"event: " + event.type.encode()
        assert json.loads(data.removeprefix(b"data: "))["type"] == event.type


def test_usage_is_cumulative_in_message_delta() -> None:
    events, _ = run([TextChunk("a"), Finished("max_tokens", 5)])
    delta = next(e for e in events if isinstance(e, ev.MessageDelta))
    assert delta.usage.output_tokens == 5
    assert delta.usage.input_tokens == 7
    start = events[0]
    assert isinstance(start, ev.MessageStart)
    assert start.message.usage.input_tokens == 7


def test_events_after_finish_are_refused() -> None:
    _, state = run([Finished("end_turn", 0)])
    with pytest.raises(StreamProtocolError):
        state.feed(TextChunk("late"))


def test_tool_input_outside_a_tool_block_is_refused() -> None:
    state = MessageState("msg_test", "m", input_tokens=1)
    state.start()
    with pytest.raises(StreamProtocolError):
        state.feed(ToolInputChunk("{}"))


def test_failure_becomes_an_error_event() -> None:
    state = MessageState("msg_test", "m", input_tokens=1)
    state.start()
    state.feed(TextChunk("x"))
    (error,) = state.fail(EngineError("boom"), "req_1")
    assert isinstance(error, ev.Error)
    assert error.error.type == "api_error"
    assert error.request_id == "req_1"


@given(
    st.text(),
    st.integers(min_value=0, max_value=500),
    st.sampled_from(["text", "thinking", "json"]),
)
def test_the_fast_delta_path_gives_the_models_bytes(text: str, index: int, kind: str) -> None:
    from parley.streaming.sse import slow_encode

    delta: ev.Delta = (
        ev.TextDelta(text=text)
        if kind == "text"
        else ev.ThinkingDelta(thinking=text)
        if kind == "thinking"
        else ev.InputJSONDelta(partial_json=text)
    )
    event = ev.ContentBlockDelta(index=index, delta=delta)
    assert encode(event) == slow_encode(event)

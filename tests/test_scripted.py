"""The scripted engine's rules, through the official SDK over a real socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Gate, Server, write_rules

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {
    "name": "get_time",
    "description": "Time in a zone",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


def test_echo_without_rule(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="scripted", max_tokens=50, messages=[{"role": "user", "content": "echo me please"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo me please"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3


def test_exact_rule_with_tool_use(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "weather in Paris"}],
    )
    assert [b.type for b in message.content] == ["text", "tool_use"]
    call = message.content[1]
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_")
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris", "unit": "celsius"}
    assert message.stop_reason == "tool_use"


def test_regex_rule_needs_its_tools(scripted_client: anthropic.Anthropic) -> None:
    both = scripted_client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "two tools now"}],
    )
    assert [b.name for b in both.content if b.type == "tool_use"] == ["get_weather", "get_time"]
    one = scripted_client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "two tools now"}],
    )
    assert one.content[0].type == "text" and one.content[0].text == "two tools now"


def test_system_rule(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="scripted",
        max_tokens=50,
        system=[{"type": "text", "text": "You are a pirate."}],
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.content[0].type == "text" and message.content[0].text == "Arr, matey!"


def test_usage_override(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="scripted", max_tokens=50, messages=[{"role": "user", "content": "custom usage"}]
    )
    assert message.usage.output_tokens == 42


def test_streamed_tool_use_arrives_in_chunks(scripted_client: anthropic.Anthropic) -> None:
    with scripted_client.messages.stream(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "weather in Paris"}],
    ) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    json_chunks = [d for d in deltas if d.delta.type == "input_json_delta"]
    assert len(json_chunks) > 1
    assert final.content[1].type == "tool_use"
    assert final.content[1].input == {"city": "Paris", "unit": "celsius"}


def test_stop_sequence_and_max_tokens(scripted_client: anthropic.Anthropic) -> None:
    stopped = scripted_client.messages.create(
        model="scripted",
        max_tokens=50,
        stop_sequences=["four"],
        messages=[{"role": "user", "content": "count to ten"}],
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "four"
    assert stopped.content[0].type == "text" and stopped.content[0].text == "one two three "
    capped = scripted_client.messages.create(
        model="scripted", max_tokens=3, messages=[{"role": "user", "content": "count to ten"}]
    )
    assert capped.stop_reason == "max_tokens"
    assert capped.usage.output_tokens == 3
    assert capped.content[0].type == "text" and capped.content[0].text == "one two three"


def test_failure_mid_stream_is_an_error_event(scripted_server: Server) -> None:
    client = scripted_server.client()
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="scripted", max_tokens=50, messages=[{"role": "user", "content": "fail midway"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "scripted failure" in str(caught.value)


def test_failure_without_stream_is_500(scripted_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        scripted_client.messages.create(
            model="scripted", max_tokens=50, messages=[{"role": "user", "content": "fail midway"}]
        )
    assert caught.value.status_code == 500
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert caught.value.body["error"]["message"] == "scripted failure"  # type: ignore[index]
    # The connection stays usable: the next request on it is answered.
    message = scripted_client.messages.create(
        model="scripted", max_tokens=5, messages=[{"role": "user", "content": "still here?"}]
    )
    assert message.content[0].text == "still here?"  # type: ignore[union-attr]


def held(gate: Gate, text: str, **reply: object) -> dict[str, Any]:
    """A rule answering ``text`` with ``text``, held at ``gate``."""
    return {"match": {"user": text}, "reply": {"text": text, "hold": str(gate.path), **reply}}


def test_pings_while_the_engine_is_busy(server_factory: Any, tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    rules = write_rules(tmp_path / "held.yaml", [held(gate, "one two three")])
    server: Server = server_factory(
        "--engine", "scripted", "--script", str(rules), "--ping-interval", "0.05"
    )
    body = {
        "model": "scripted",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    names: list[str] = []
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
                if names.count("ping") == 3:
                    gate.open()  # three pings while the answer was held: let it go
    assert names[0] == "message_start" and names[-1] == "message_stop"
    first_delta = names.index("content_block_delta")
    assert names[:first_delta].count("ping") >= 3
    with server.client().messages.stream(
        model="scripted", max_tokens=10, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        assert stream.get_final_message().content[0].text == "one two three"  # type: ignore[union-attr]


def test_a_request_waiting_past_the_queue_timeout_gets_529(
    server_factory: Any, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    rules = write_rules(tmp_path / "one-slot.yaml", [held(gate, "a b c d")], slots=1)
    server: Server = server_factory(
        "--engine", "scripted", "--script", str(rules), "--queue-timeout", "0.5"
    )
    client = server.client()
    words = {"role": "user", "content": "a b c d"}
    with client.messages.stream(model="scripted", max_tokens=20, messages=[words]) as busy:
        server.wait_stats("scripted", running=1, held=1)  # the only slot is taken
        with pytest.raises(anthropic.APIStatusError) as waited:
            client.messages.create(model="scripted", max_tokens=5, messages=[words])
        assert waited.value.status_code == 529
        assert "waited 0.5 s for capacity" in str(waited.value)
        gate.open()
        assert busy.get_final_message().stop_reason == "end_turn"


def test_a_gate_holds_replies_in_their_slots_until_it_opens(tmp_path: Path) -> None:
    """In process: ``hold_after`` tokens go out, then the reply waits (counted as
    held, in its slot); a cancelled one leaves the gate; opening it releases the rest."""
    import asyncio

    from parley.conversation import Conversation, TextPart, Turn
    from parley.engines.base import EngineEvent, SamplingParams, TextChunk
    from parley.engines.scripted import Script, ScriptedEngine

    gate = Gate(tmp_path / "gate")
    rules = write_rules(tmp_path / "r.yaml", [held(gate, "a b c d", hold_after=2)], slots=2)
    engine = ScriptedEngine(Script.load(rules))
    conv = Conversation(system=None, turns=(Turn("user", (TextPart("a b c d"),)),))
    prompt = engine.prepare(conv)

    async def until(**want: int) -> None:
        async with asyncio.timeout(30):  # a guard against a hang
            # The engine's counters are plain numbers: polled (each look yields to it).
            while any(engine.stats()[k] != v for k, v in want.items()):  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert engine.stats() == {"waiting": 0, "running": 0, "held": 0, "cancelled": 0} | want

    async def main() -> None:
        events: list[list[EngineEvent]] = [[], [], []]

        async def run(i: int) -> None:
            async for event in engine.submit(prompt, SamplingParams(max_tokens=10)):
                events[i].append(event)

        tasks = [asyncio.create_task(run(i)) for i in range(3)]
        # Two slots: two replies wait at the gate after their first two words, one waits
        # for a slot.
        await until(waiting=1, running=2, held=2)
        texts = ["".join(e.text for e in got if isinstance(e, TextChunk)) for got in events]
        assert sorted(texts) == ["", "a b", "a b"]
        cancelled = texts.index("a b")
        tasks[cancelled].cancel()
        # The waiting one takes the freed slot, up to the gate.
        await until(running=2, held=2, cancelled=1)
        gate.open()
        async with asyncio.timeout(30):
            await asyncio.gather(*(t for i, t in enumerate(tasks) if i != cancelled))
        await until(cancelled=1)
        for i, got in enumerate(events):
            if i != cancelled:
                assert "".join(e.text for e in got if isinstance(e, TextChunk)) == "a b c d"

    asyncio.run(main())


def test_delay_paces_each_streamed_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with the engine's sleep recorded instead of waited out."""
    import asyncio

    from parley.conversation import Conversation, TextPart, Turn
    from parley.engines import scripted
    from parley.engines.base import SamplingParams

    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(scripted.asyncio, "sleep", record)
    engine = scripted.ScriptedEngine(scripted.Script(delay=0.25))
    conv = Conversation(system=None, turns=(Turn("user", (TextPart("a b c"),)),))

    async def main() -> list[object]:
        generation = engine.submit(engine.prepare(conv), SamplingParams(max_tokens=10))
        return [event async for event in generation]

    events = asyncio.run(main())
    assert slept == [0.25, 0.25, 0.25]  # one pause before each word
    assert len(events) == 5  # three words, the flushed rest, the finish

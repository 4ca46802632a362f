"""One request never takes the engine down: tool-grammar attacks on the real model.

Each attack is sent as a client would (the SDK, strict response validation,
a real socket) to a server running the embedded model, together with a plain
request that must be answered meanwhile; afterwards nothing is left running.
Before the fix, a ``maxLength`` above 1000 killed the decode thread for good,
Claude Code's own tools (``maxLength: 524288``) segfaulted the server, and an
ambiguous ``pattern`` froze decoding for every client.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import MODEL, Server
from tests.test_grammar_safety import _schemas

pytestmark = pytest.mark.model

CC_TOOLS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "claude_code_tools.json").read_text()
)["tools"]


def client(server: Server) -> anthropic.Anthropic:
    return server.client(_strict_response_validation=True)


def plain(server: Server) -> anthropic.types.Message:
    return client(server).messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Say hello."}]
    )


def tool(schema: dict[str, Any], name: str = "f") -> dict[str, Any]:
    return {"name": name, "description": "A tool.", "input_schema": schema}


def string_tool(**bounds: Any) -> dict[str, Any]:
    return tool({"type": "object", "properties": {"q": {"type": "string", **bounds}}})


ATTACKS = {
    "maxLength 1001, auto": (string_tool(maxLength=1001), None),
    "maxLength 20000, any": (string_tool(maxLength=20000), {"type": "any"}),
    "maxLength 524288, any": (string_tool(maxLength=524288), {"type": "any"}),
    "minLength 100000, any": (string_tool(minLength=100000), {"type": "any"}),
    "maxItems 5000, any": (
        tool({"type": "object", "properties": {"a": {"type": "array", "maxItems": 5000}}}),
        {"type": "any"},
    ),
    "pattern {0,5000}, any": (string_tool(pattern="^[a-z]{0,5000}$"), {"type": "any"}),
    "ambiguous pattern, any": (string_tool(pattern="^([a-z]?){100}$"), {"type": "any"}),
    "Claude Code's Workflow tool, any": (
        next(t for t in CC_TOOLS if t["name"] == "Workflow"),
        {"type": "any"},
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_grammar_attack_ends_and_others_are_served(embedded_server: Server, name: str) -> None:
    attack, choice = ATTACKS[name]
    extra: dict[str, Any] = {"tool_choice": choice} if choice else {}
    with ThreadPoolExecutor(2) as pool:
        hostile = pool.submit(
            client(embedded_server).messages.create,
            model=MODEL,
            max_tokens=40,
            messages=[{"role": "user", "content": "hi"}],
            tools=[attack],
            **extra,
        )
        assert plain(embedded_server).stop_reason in ("end_turn", "max_tokens")
        answer = hostile.result(timeout=300)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    if choice:
        assert answer.content[0].type == "tool_use"
    assert embedded_server.wait_idle(MODEL)["running"] == 0
    assert plain(embedded_server).content  # and afterwards


def test_a_client_leaving_a_grammar_request_frees_the_engine(embedded_server: Server) -> None:
    attack, choice = ATTACKS["ambiguous pattern, any"]
    with client(embedded_server).messages.stream(
        model=MODEL,
        max_tokens=2000,
        messages=[{"role": "user", "content": "Write a long word."}],
        tools=[attack],
        tool_choice=choice,  # type: ignore[arg-type]
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break  # the client leaves mid-generation
    stats = embedded_server.wait_idle(MODEL)
    assert stats["running"] == 0
    assert plain(embedded_server).content


def test_claude_codes_own_tools_are_counted_with_their_grammar(embedded_server: Server) -> None:
    """The full tool set of Claude Code's newest release (captured from its first
    request) builds a grammar llama.cpp accepts; counting renders it exactly."""
    counts = {
        choice: client(embedded_server)
        .messages.count_tokens(
            model=MODEL,
            messages=[{"role": "user", "content": "list the files"}],
            tools=CC_TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": choice},  # type: ignore[arg-type]
        )
        .input_tokens
        for choice in ("auto", "any")
    }
    assert all(count > 10_000 for count in counts.values()), counts
    assert plain(embedded_server).content
    # llama.cpp prints a grammar it refuses to stderr; parley keeps it out of the log.
    assert "::=" not in embedded_server.log()


def test_claude_codes_own_tools_decode_on_the_real_engine(tmp_path: Path) -> None:
    """Decoding under the grammar of Claude Code's full tool set, in-process on the
    embedded model. The prompt is cut short: rendered whole the tools are 15,000
    tokens, minutes of prefill on two cores, and the prompt is not what broke."""
    import asyncio

    from parley.conversation import Conversation, ToolSpec, Turn
    from parley.engines.base import Finished, SamplingParams, ToolCallStart
    from parley.engines.llamacpp import LlamaCppEngine, embedded_model_path
    from parley.engines.llamacpp.native import NativeConfig
    from parley.engines.llamacpp.output import LlamaPrompt

    config = NativeConfig(n_ctx=32768, n_seq_max=2, n_batch=256, n_threads=2)
    engine = LlamaCppEngine(embedded_model_path(), model_id=MODEL, config=config)
    tools = tuple(
        ToolSpec(t["name"], t.get("description", ""), t["input_schema"]) for t in CC_TOOLS
    )

    async def run() -> list[Any]:
        await engine.start()
        try:
            conversation = Conversation(
                system=None, turns=(Turn("user", ()),), tools=tools, tool_choice="any"
            )
            full = await asyncio.to_thread(engine.prepare, conversation)
            assert full.grammar is not None and full.n_tokens > 10_000
            assert isinstance(full, LlamaPrompt)
            short = LlamaPrompt(conversation, "", full.tokens[-64:], full.grammar)
            generation = engine.submit(short, SamplingParams(max_tokens=48, temperature=1.0))
            return [event async for event in generation]
        finally:
            await engine.close()

    events = asyncio.run(run())
    assert isinstance(events[0], ToolCallStart) and events[0].name in {t.name for t in tools}
    assert isinstance(events[-1], Finished)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_schemas())
def test_random_schemas_end_and_a_plain_client_is_served_throughout(
    embedded_server: Server, schema: dict[str, Any]
) -> None:
    stop = threading.Event()
    served: list[str] = []

    def plain_loop() -> None:
        # At least one, however soon the hostile request is refused (a 400 may come
        # back before this thread has sent anything).
        served.append(plain(embedded_server).stop_reason or "")
        while not stop.is_set():
            served.append(plain(embedded_server).stop_reason or "")

    with ThreadPoolExecutor(1) as pool:
        background = pool.submit(plain_loop)
        try:
            answer = client(embedded_server).messages.create(
                model=MODEL,
                max_tokens=16,
                messages=[{"role": "user", "content": "Call the tool."}],
                tools=[tool(schema)],  # type: ignore[list-item]
                tool_choice={"type": "any"},
            )
            assert answer.stop_reason in ("max_tokens", "tool_use")
        except anthropic.BadRequestError as exc:  # a schema the API refuses too
            assert exc.status_code == 400
        finally:
            stop.set()
            background.result(timeout=300)
    assert served and all(reason in ("end_turn", "max_tokens") for reason in served)
    embedded_server.wait_idle(MODEL)

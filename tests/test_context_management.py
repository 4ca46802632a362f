"""Context editing (beta ``context-management-2025-06-27``) through the SDK.

Every figure is checked against count_tokens of the conversation edited by
hand (and sent without context_management): the scripted engine for tool-use
clearing, where the reply is exact; the embedded model for thinking (the
scripted engine renders no thinking) and for the prompt cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from parley.conversation.context_edits import CLEARED_RESULT
from tests.conftest import MODEL, Server, beta_batch_result

BETA = ["context-management-2025-06-27"]
WORDS = " ".join(f"line {i} of a long listing" for i in range(40))
TOOLS = [
    {"name": name, "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    for name in ("read", "grep")
]


def tool_history(uses: int, *, tail: str = "summarise") -> list[dict[str, Any]]:
    """A tool loop of ``uses`` calls (read, grep, read, ...), then a user question."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "look around"}]
    for i in range(uses):
        name = ("read", "grep")[i % 2]
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"toolu_{i}",
                        "name": name,
                        "input": {"path": f"f{i}"},
                    }
                ],
            }
        )
        result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"{i}: {WORDS}"}
        messages.append({"role": "user", "content": [result]})
    messages[-1]["content"].append({"type": "text", "text": tail})
    return messages


def cleared_by_hand(
    messages: list[dict[str, Any]], ids: set[str], inputs: frozenset[str] | set[str] = frozenset()
) -> list[dict[str, Any]]:
    """``messages`` with the results of ``ids`` (and the inputs of ``inputs``) cleared."""
    out = copy.deepcopy(messages)
    for message in out:
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block["type"] == "tool_result" and block["tool_use_id"] in ids:
                block["content"] = CLEARED_RESULT
            if block["type"] == "tool_use" and block["id"] in inputs:
                block["input"] = {}
    return out


def edit(**options: Any) -> dict[str, Any]:
    return {"edits": [{"type": "clear_tool_uses_20250919", **options}]}


LOW = {"type": "input_tokens", "value": 1}  # any prompt exceeds it


@pytest.fixture(scope="module")
def client(scripted_server: Server) -> anthropic.Anthropic:
    return scripted_server.client()


def count(client: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return client.beta.messages.count_tokens(
        model="scripted", messages=messages, tools=TOOLS, betas=BETA, **extra
    )  # type: ignore[arg-type]


def create(client: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return client.beta.messages.create(
        model="scripted", max_tokens=16, messages=messages, tools=TOOLS, betas=BETA, **extra
    )  # type: ignore[arg-type]


def applied(message: Any) -> list[dict[str, Any]]:
    return [e.model_dump() for e in message.context_management.applied_edits]


# --- clear_tool_uses_20250919 ------------------------------------------------------


def test_clears_all_but_the_three_most_recent_tool_results(client: anthropic.Anthropic) -> None:
    history = tool_history(5)
    by_hand = cleared_by_hand(history, {"toolu_0", "toolu_1"})
    original = count(client, history).input_tokens
    edited = count(client, by_hand).input_tokens
    assert edited < original
    expected = [
        {
            "type": "clear_tool_uses_20250919",
            "cleared_tool_uses": 2,
            "cleared_input_tokens": original - edited,
        }
    ]
    management = edit(trigger=LOW)

    counted = count(client, history, context_management=management)
    assert counted.input_tokens == edited
    assert counted.context_management.original_input_tokens == original

    message = create(client, history, context_management=management)
    assert message.content[0].text == "summarise"
    assert applied(message) == expected
    usage = message.usage
    total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    assert total == edited

    with client.beta.messages.stream(
        model="scripted",
        max_tokens=16,
        messages=history,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        betas=BETA,
        context_management=management,  # type: ignore[arg-type]
    ) as stream:
        deltas = [e for e in stream if e.type == "message_delta"]
        final = stream.get_final_message()
    assert [applied(d) for d in deltas] == [expected]
    assert applied(final) == expected and final.usage.input_tokens == edited


def test_keep_and_clear_tool_inputs(client: anthropic.Anthropic) -> None:
    history = tool_history(4)
    older = {"toolu_0", "toolu_1", "toolu_2"}
    for inputs, cleared in ((True, older), (["grep"], {"toolu_1"}), (False, set())):
        management = edit(
            trigger=LOW, keep={"type": "tool_uses", "value": 1}, clear_tool_inputs=inputs
        )
        by_hand = count(client, cleared_by_hand(history, older, cleared)).input_tokens
        counted = count(client, history, context_management=management)
        assert counted.input_tokens == by_hand, inputs
        message = create(client, history, context_management=management)
        assert applied(message) == [
            {
                "type": "clear_tool_uses_20250919",
                "cleared_tool_uses": 3,
                "cleared_input_tokens": count(client, history).input_tokens - by_hand,
            }
        ]


def test_keep_zero_clears_the_current_loop_too(client: anthropic.Anthropic) -> None:
    history = tool_history(2)
    management = edit(trigger=LOW, keep={"type": "tool_uses", "value": 0})
    by_hand = cleared_by_hand(history, {"toolu_0", "toolu_1"})
    assert count(client, history, context_management=management).input_tokens == (
        count(client, by_hand).input_tokens
    )


def test_excluded_tools_keep_their_results(client: anthropic.Anthropic) -> None:
    history = tool_history(6)  # read: 0, 2, 4; grep: 1, 3, 5
    management = edit(trigger=LOW, exclude_tools=["read"])
    by_hand = cleared_by_hand(history, {"toolu_1"})  # 3, 4, 5 are the three kept
    message = create(client, history, context_management=management)
    assert message.context_management.applied_edits[0].cleared_tool_uses == 1
    assert message.usage.input_tokens == count(client, by_hand).input_tokens


def test_tool_uses_trigger(client: anthropic.Anthropic) -> None:
    history = tool_history(5)
    for value, cleared in ((5, 0), (4, 2)):
        management = edit(trigger={"type": "tool_uses", "value": value})
        message = create(client, history, context_management=management)
        assert [e.cleared_tool_uses for e in message.context_management.applied_edits] == (
            [cleared] if cleared else []
        )


def test_nothing_cleared_leaves_the_prompt_and_says_so(client: anthropic.Anthropic) -> None:
    history = tool_history(5)
    original = count(client, history).input_tokens
    cleared = (
        original - count(client, cleared_by_hand(history, {"toolu_0", "toolu_1"})).input_tokens
    )
    untouched = [
        edit(trigger={"type": "input_tokens", "value": original}),  # not exceeded
        edit(),  # the default trigger, 100,000 tokens
        edit(trigger=LOW, clear_at_least={"type": "input_tokens", "value": cleared + 1}),
        edit(trigger=LOW, keep={"type": "tool_uses", "value": 5}),
        edit(trigger=LOW, exclude_tools=["read", "grep"]),
        {"edits": []},
    ]
    for management in untouched:
        counted = count(client, history, context_management=management)
        assert counted.input_tokens == counted.context_management.original_input_tokens == original
        message = create(client, history, context_management=management)
        assert applied(message) == [] and message.usage.input_tokens == original, management
    reachable = edit(trigger=LOW, clear_at_least={"type": "input_tokens", "value": cleared})
    assert count(client, history, context_management=reachable).input_tokens == original - cleared
    just_exceeded = edit(trigger={"type": "input_tokens", "value": original - 1})
    assert applied(create(client, history, context_management=just_exceeded))[0][
        "cleared_input_tokens"
    ] == (cleared)


def test_a_breakpoint_on_a_cleared_result_stays_after_the_placeholder() -> None:
    from parley.conversation import CacheMark, Conversation, ToolCallPart, ToolResultPart, Turn
    from parley.conversation.context_edits import clear_tool_uses
    from parley.wire.context_management import ClearToolUses

    mark = CacheMark("\ue000n:0\ue001", "5m")
    conversation = Conversation(
        system=None,
        turns=(
            Turn("user", ()),
            Turn("assistant", (ToolCallPart("t1", "read", {"path": "a"}, mark="\ue000n:1\ue001"),)),
            Turn("user", (ToolResultPart("t1", "long text" + mark.tag),)),
        ),
        marks=(mark,),
    )
    everything = ClearToolUses(
        type="clear_tool_uses_20250919",
        keep={"type": "tool_uses", "value": 0},  # type: ignore[arg-type]
        clear_tool_inputs=True,
    )
    edited, cleared = clear_tool_uses(conversation, everything)
    assert cleared == 1
    call, result = edited.turns[1].parts[0], edited.turns[2].parts[0]
    assert isinstance(call, ToolCallPart) and call.input == {} and call.mark == "\ue000n:1\ue001"
    assert isinstance(result, ToolResultPart) and result.text == CLEARED_RESULT + mark.tag


def test_a_tool_loop_is_one_thinking_turn() -> None:
    from parley.conversation import (
        Conversation,
        TextPart,
        ThinkingPart,
        ToolCallPart,
        ToolResultPart,
        Turn,
    )
    from parley.conversation.context_edits import clear_thinking
    from parley.wire.context_management import ClearThinking

    def assistant(*parts: Any) -> Turn:
        return Turn("assistant", (ThinkingPart("hm"), *parts))

    turns = (
        Turn("user", (TextPart("q1"),)),
        assistant(TextPart("a1")),
        Turn("user", (TextPart("q2"),)),
        assistant(ToolCallPart("t1", "read", {})),
        Turn("user", (ToolResultPart("t1", "r"),)),
        assistant(ToolCallPart("t2", "read", {})),
        Turn("user", (ToolResultPart("t2", "r"),)),
    )
    one = ClearThinking(type="clear_thinking_20251015")  # keeps the last turn's thinking
    edited, cleared = clear_thinking(Conversation(system=None, turns=turns), one)
    assert cleared == 1
    thinks = [any(isinstance(p, ThinkingPart) for p in t.parts) for t in edited.turns]
    assert thinks == [False, False, False, True, False, True, False]


def test_without_context_management_no_field_is_sent(scripted_server: Server) -> None:
    body = {"model": "scripted", "max_tokens": 8, "messages": tool_history(1), "tools": TOOLS}
    created = httpx.post(f"{scripted_server.url}/v1/messages", json=body, timeout=30).json()
    assert "context_management" not in created
    del body["max_tokens"]
    counted = httpx.post(f"{scripted_server.url}/v1/messages/count_tokens", json=body, timeout=30)
    assert counted.json().keys() == {"input_tokens"}


def test_batch_results_carry_the_applied_edits(client: anthropic.Anthropic) -> None:
    history = tool_history(4)
    params = {
        "model": "scripted",
        "max_tokens": 16,
        "messages": history,
        "tools": TOOLS,
        "context_management": edit(trigger=LOW),
    }
    item = beta_batch_result(client, "cm", params, BETA)
    assert item.result.type == "succeeded"
    message = item.result.message
    by_hand = count(client, cleared_by_hand(history, {"toolu_0"})).input_tokens
    assert applied(message) == [
        {
            "type": "clear_tool_uses_20250919",
            "cleared_tool_uses": 1,
            "cleared_input_tokens": count(client, history).input_tokens - by_hand,
        }
    ]


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("management", "needle"),
    [
        ({"edits": [{"type": "clear_everything"}]}, "context_management.edits.0.type: Input"),
        ({"edits": [{}]}, "context_management.edits.0.type: Field required"),
        (  # compaction triggers on input tokens only (tests/test_compaction.py)
            {"edits": [{"type": "compact_20260112", "trigger": {"type": "tool_uses", "value": 3}}]},
            "context_management.edits.0.trigger",
        ),
        (edit(keep={"type": "tool_uses", "value": -1}), "context_management.edits.0.keep.value"),
        (edit(trigger={"type": "input_tokens", "value": -5}), "edits.0.trigger.value"),
        (edit(trigger={"type": "turns", "value": 5}), "context_management.edits.0.trigger"),
        (edit(clear_at_least={"type": "input_tokens", "value": -1}), "clear_at_least.value"),
        (edit(clear_tool_inputs="read"), "context_management.edits.0.clear_tool_inputs"),
        (edit(exclude_tools="read"), "context_management.edits.0.exclude_tools"),
        (edit(keep_all=True), "context_management.edits.0.keep_all: Extra inputs"),
        (
            {"edits": [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns"}}]},
            "context_management.edits.0.keep.value: Field required",
        ),
        (
            {"edits": [{"type": "clear_thinking_20251015", "keep": "some"}]},
            "context_management.edits.0.keep",
        ),
        (
            {
                "edits": [
                    {"type": "clear_tool_uses_20250919"},
                    {"type": "clear_thinking_20251015"},
                ]
            },
            "context_management: `clear_thinking_20251015` must come first",
        ),
        (
            {"edits": [{"type": "clear_thinking_20251015"}]},
            "`clear_thinking_20251015` strategy requires `thinking` to be enabled",
        ),
    ],
)
def test_invalid_context_management_is_a_400_naming_the_path(
    client: anthropic.Anthropic, management: dict[str, Any], needle: str
) -> None:
    for call in (count, create):
        with pytest.raises(anthropic.BadRequestError) as caught:
            call(client, tool_history(1), context_management=management)
        assert needle in caught.value.message, caught.value.message


# --- the embedded model: thinking and the prompt cache -------------------------------

LISTING = " ".join(f"entry {i}: the quick brown fox" for i in range(8))
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly." for i in range(8))


@pytest.fixture(scope="module")
def model(server_factory: Callable[..., Server]) -> anthropic.Anthropic:
    """The embedded model with one slot and small cacheable prefixes."""
    server = server_factory("--cache-min-tokens", "64", "--parallel", "1")
    return server.client()


@pytest.fixture(scope="module")
def thought(model: anthropic.Anthropic) -> dict[str, Any]:
    """A thinking block signed by the server (its text is whatever the model wrote)."""
    message = model.messages.create(
        model=MODEL,
        max_tokens=48,
        thinking={"type": "adaptive"},
        output_config={"effort": "low"},  # type: ignore[typeddict-unknown-key]
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
    )
    block = message.content[0]
    assert block.type == "thinking"
    return block.model_dump(exclude_none=True)


def loop_with_thinking(thought: dict[str, Any], result: str = "4") -> list[dict[str, Any]]:
    """A tool loop under way: the model thought, called a tool, the result came back."""
    call = {"type": "tool_use", "id": "toolu_a", "name": "read", "input": {"path": "x"}}
    return [
        {"role": "user", "content": "What is 2 + 2? Read x first."},
        {"role": "assistant", "content": [thought, call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": result}],
        },
    ]


def without_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(messages)
    for message in out:
        if message["role"] == "assistant":
            message["content"] = [b for b in message["content"] if b["type"] != "thinking"]
    return out


def model_count(model: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return model.beta.messages.count_tokens(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        thinking={"type": "adaptive"},
        betas=BETA,
        **extra,
    )


def model_create(model: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    """A 4-token answer to ``messages`` with the tools and adaptive thinking (as counted)."""
    return model.beta.messages.create(
        model=MODEL,
        max_tokens=4,
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        thinking={"type": "adaptive"},
        betas=BETA,
        **extra,
    )


@pytest.mark.model
def test_clear_thinking_of_the_current_loop(
    model: anthropic.Anthropic, thought: dict[str, Any]
) -> None:
    history = loop_with_thinking(thought)
    original = model_count(model, history).input_tokens
    without = copy.deepcopy(history)
    without[1]["content"] = without[1]["content"][1:]
    edited = model_count(model, without).input_tokens
    assert edited < original  # the current loop's thinking is rendered
    management = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 0}}
        ]
    }
    counted = model_count(model, history, context_management=management)
    assert counted.input_tokens == edited
    assert counted.context_management.original_input_tokens == original
    # Kept (the default keeps the last turn's thinking, and "all" keeps all).
    for keep in ({}, {"keep": "all"}, {"keep": {"type": "all"}}):
        management = {"edits": [{"type": "clear_thinking_20251015", **keep}]}
        counted = model_count(model, history, context_management=management)
        assert counted.input_tokens == counted.context_management.original_input_tokens == original


@pytest.mark.model
def test_both_edits_in_order_each_measured_after_the_one_before(
    model: anthropic.Anthropic, thought: dict[str, Any]
) -> None:
    both = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 0}},
            {
                "type": "clear_tool_uses_20250919",
                "trigger": LOW,
                "keep": {"type": "tool_uses", "value": 0},
            },
        ]
    }
    history = loop_with_thinking(thought, LISTING)
    original = model_count(model, history).input_tokens
    thoughtless = model_count(model, without_thinking(history)).input_tokens
    cleared = model_count(
        model, cleared_by_hand(without_thinking(history), {"toolu_a"})
    ).input_tokens
    counted = model_count(model, history, context_management=both)
    assert counted.input_tokens == cleared
    assert counted.context_management.original_input_tokens == original
    message = model_create(model, history, context_management=both)
    assert applied(message) == [
        {
            "type": "clear_thinking_20251015",
            "cleared_thinking_turns": 1,
            "cleared_input_tokens": original - thoughtless,
        },
        {
            "type": "clear_tool_uses_20250919",
            "cleared_tool_uses": 1,
            "cleared_input_tokens": thoughtless - cleared,
        },
    ]
    usage = message.usage
    assert (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        == (cleared)
    )
    # A result shorter than the placeholder: clearing it would grow the prompt.
    short = loop_with_thinking(thought, "4")
    counted = model_count(model, short, context_management=both)
    assert counted.input_tokens == model_count(model, without_thinking(short)).input_tokens


@pytest.mark.model
def test_thinking_of_earlier_turns_is_not_rendered_so_clearing_it_clears_nothing(
    model: anthropic.Anthropic, thought: dict[str, Any]
) -> None:
    earlier = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": [thought, {"type": "text", "text": "4"}]},
    ]
    history = earlier + loop_with_thinking(thought)
    management = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}
        ]
    }
    message = model_create(model, history, context_management=management)
    assert applied(message) == []
    assert model_count(model, history).input_tokens == (
        message.usage.input_tokens
        + message.usage.cache_read_input_tokens
        + message.usage.cache_creation_input_tokens
    )


def cached_history() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "List the entries."}]
    for i in range(3):
        call = {"type": "tool_use", "id": f"toolu_{i}", "name": "read", "input": {"path": f"p{i}"}}
        result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"{i} {LISTING}"}
        messages += [
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ]
    messages[-1]["content"].append(
        {"type": "text", "text": "Which entry is last?", "cache_control": {"type": "ephemeral"}}
    )
    return messages


@pytest.mark.model
def test_clearing_invalidates_the_cache_from_the_first_cleared_block(
    model: anthropic.Anthropic,
) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    history = cached_history()

    def ask(messages: list[dict[str, Any]], **extra: Any) -> Any:
        message = model.beta.messages.create(
            model=MODEL,
            max_tokens=2,
            extra_body={"temperature": 0.0},
            system=system,  # type: ignore[arg-type]
            messages=messages,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            betas=BETA,
            **extra,
        )
        usage = message.usage
        counted = model.beta.messages.count_tokens(
            model=MODEL,
            system=system,  # type: ignore[arg-type]
            messages=messages,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            betas=BETA,
            **extra,
        )
        total = (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        assert total == counted.input_tokens
        return usage, counted.input_tokens

    # The system prompt alone, cached: its prefix is what survives an edit.
    warm, _ = ask([{"role": "user", "content": "Hello."}])
    prefix = warm.cache_creation_input_tokens + warm.cache_read_input_tokens
    assert prefix > 64
    full, whole = ask(history)  # cached up to the final breakpoint
    assert full.cache_read_input_tokens == prefix
    marked = full.cache_read_input_tokens + full.cache_creation_input_tokens
    again, _ = ask(history)
    assert again.cache_read_input_tokens == marked  # every token up to the last breakpoint

    management = edit(trigger=LOW, keep={"type": "tool_uses", "value": 1})
    cleared, edited = ask(history, context_management=management)
    assert edited < whole
    # The first tool result changed: only the system prompt's prefix is read.
    assert cleared.cache_read_input_tokens == prefix
    # Up to the last breakpoint as before, less what the edit cleared.
    assert cleared.cache_creation_input_tokens == marked - (whole - edited) - prefix
    # The edited prefix is cached in turn, and the same edit reads it whole.
    repeated, _ = ask(history, context_management=management)
    assert repeated.cache_read_input_tokens == marked - (whole - edited)

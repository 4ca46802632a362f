"""The tool-call parser: any split of the text gives the same events."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from parley.conversation import Conversation, TextPart, ToolSpec, Turn
from parley.engines.base import EngineEvent, TextChunk, ToolCallStart, ToolInputChunk
from parley.engines.llamacpp.grammar import grammar_for
from parley.engines.llamacpp.output import FALLBACK, HERMES, CallSyntax, ToolCallParser

TOOLS = (ToolSpec("a", "", {"type": "object"}), ToolSpec("b", "", {"type": "object"}))


def run(
    pieces: list[str], stops: tuple[str, ...] = (), syntax: CallSyntax = FALLBACK
) -> tuple[list[EngineEvent], ToolCallParser]:
    parser = ToolCallParser(TOOLS, stops, syntax)
    events: list[EngineEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
        if parser.duplicate or parser.stop_hit:
            break
    else:
        events.extend(parser.flush())
    return events, parser


def summary(events: list[EngineEvent]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for event in events:
        if isinstance(event, TextChunk):
            kind, value = "text", event.text
        elif isinstance(event, ToolCallStart):
            kind, value = "call", event.name
        else:
            assert isinstance(event, ToolInputChunk)
            kind, value = "input", event.partial_json
        if out and out[-1][0] == kind and kind != "call":
            out[-1] = (kind, out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


TEXT = (
    'Let me check.<tool_call name="a">\n{"x": 1}\n</tool_call>'
    '\n<tool_call name="b">\n{"y": [2, 3]}\n</tool_call>'
)


def splits(text: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.integers(0, len(text)), max_size=12).map(
        lambda cuts: [
            text[i:j] for i, j in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)], strict=True)
        ]
    )


@given(splits(TEXT))
def test_any_split_gives_the_same_events(pieces: list[str]) -> None:
    events, parser = run(pieces)
    assert summary(events) == [
        ("text", "Let me check."),
        ("call", "a"),
        ("input", '{"x": 1}'),
        ("call", "b"),
        ("input", '{"y": [2, 3]}'),
    ]
    assert parser.calls == 2


DUPLICATE = (
    '<tool_call name="a">\n{"x": 1}\n</tool_call>\n<tool_call name="a">\n{"x": 1}\n</tool_call>'
)


@given(splits(DUPLICATE))
def test_an_exact_repeat_is_never_sent(pieces: list[str]) -> None:
    events, parser = run(pieces)
    assert summary(events) == [("call", "a"), ("input", '{"x": 1}')]
    assert parser.duplicate and parser.calls == 1


def test_a_call_that_diverges_from_an_earlier_one_is_sent_whole() -> None:
    text = '<tool_call name="a">\n{"x": 1}\n</tool_call>\n<tool_call name="a">\n{"x": 12}\n</tool_call>'
    events, _ = run(list(text))
    assert summary(events) == [
        ("call", "a"),
        ("input", '{"x": 1}'),
        ("call", "a"),
        ("input", '{"x": 12}'),
    ]


def test_stop_sequences_apply_to_text() -> None:
    events, parser = run(["Hello STOP there"], stops=("STOP",))
    assert summary(events) == [("text", "Hello ")]
    assert parser.stop_hit == "STOP"


def test_grammar_per_choice() -> None:
    def conv(choice: str, name: str | None = None, single: bool = False) -> Conversation:
        return Conversation(
            system=None,
            turns=(Turn("user", (TextPart("x"),)),),
            tools=TOOLS,
            tool_choice=choice,
            tool_name=name,
            disable_parallel_tool_use=single,
        )

    assert grammar_for(conv("none")) is None
    auto = grammar_for(conv("auto"))
    assert auto is not None and auto.lazy_trigger == "<tool_call"
    forced = grammar_for(conv("tool", "b", single=True))
    assert forced is not None and forced.lazy_trigger is None
    assert json.dumps('b">\n') in forced.text and json.dumps('a">\n') not in forced.text
    assert "call)*" not in forced.text


def written(syntax: CallSyntax, name: str, body: str) -> str:
    return f"{syntax.open}{name}{syntax.name_end}{body}{syntax.close}"


HERMES_TEXT = "Sure." + written(HERMES, "a", '{"x": {"y": 1}}') + "\n" + written(HERMES, "b", "{}")


@given(splits(HERMES_TEXT))
def test_hermes_syntax_any_split(pieces: list[str]) -> None:
    events, parser = run(pieces, syntax=HERMES)
    assert summary(events) == [
        ("text", "Sure."),
        ("call", "a"),
        ("input", '{"x": {"y": 1}}'),
        ("call", "b"),
        ("input", "{}"),
    ]
    assert parser.calls == 2


def test_grammar_follows_the_syntax() -> None:
    conv = Conversation(
        system=None, turns=(Turn("user", (TextPart("x"),)),), tools=TOOLS, tool_choice="any"
    )
    grammar = grammar_for(conv, HERMES)
    assert grammar is not None and grammar.syntax is HERMES
    assert json.dumps(HERMES.open) in grammar.text and json.dumps(HERMES.close) in grammar.text


# JSON-Schema features Claude Code's tools use (draft 2020-12).
CLAUDE_CODE_LIKE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "url": {"type": "string", "format": "uri", "description": "The URL"},
        "limit": {"type": "number", "exclusiveMinimum": 0, "maximum": 2000},
        "mode": {"anyOf": [{"const": "fast"}, {"const": "slow"}], "default": "fast"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 32},
        "metadata": {
            "type": "object",
            "propertyNames": {"type": "string"},
            "additionalProperties": {"type": "string"},
        },
        "args": {"description": "any JSON value, passed verbatim"},
        "description": {"type": "string", "description": "a property named like a keyword"},
    },
    "required": ["url", "description"],
    "additionalProperties": False,
}


def test_claude_code_schemas_become_a_grammar() -> None:
    tools = (
        ToolSpec("Fetch", "Fetch a URL", CLAUDE_CODE_LIKE),
        ToolSpec("Odd", "", {"title": "x"}),
    )
    conv = Conversation(system=None, turns=(Turn("user", (TextPart("x"),)),), tools=tools)
    grammar = grammar_for(conv)
    assert grammar is not None
    # The property called "description" survives the clean-up of annotations.
    assert json.dumps('"description"')[1:-1] in grammar.text or '\\"description\\"' in grammar.text

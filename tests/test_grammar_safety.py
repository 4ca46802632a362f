"""Tool grammars stay small and cheap to follow, whatever the schema says.

Fast checks of the pieces (no model): ``repeat`` writes exactly ``lo..hi``
copies for any bound, and the pattern converter refuses the patterns known
to make grammar matching explode. With the model's vocabulary: llama.cpp
accepts every grammar built from random schemas (hypothesis), with bounds up
to 10^6 and patterns from a list of pathological and ordinary ones.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.conversation import Conversation, TextPart, ToolSpec, Turn
from parley.engines.llamacpp import grammar_repeat
from parley.engines.llamacpp.grammar import grammar_for
from parley.engines.llamacpp.grammar_json import SafeConverter
from parley.engines.llamacpp.grammar_regex import pattern_rule

# Patterns that make backtracking or stack-set matchers explode, or that a
# grammar cannot express; each is left out (the string keeps its length bounds).
PATHOLOGICAL = [
    "^([a-z]?){100}$",
    "^([a-zA-Z ]?){12}$",
    "^(a|a?)+$",
    "^(a*)*$",
    "^(.*)*$",
    "^([a-z ]*)*b$",
    "^(.*a){20}$",
    "(x+x+)+y",
    "^[a-z]{0,50}[a-z]{0,50}$",
    "^(a|aa|aaa){30}$",
    "^(?=a)a$",
    "^(a)\\1$",
    "(?i)^abc$",
    "^a$|^b$",
]
ORDINARY = [
    "^[a-z]+$",
    "^\\d{3}-\\d{4}$",
    "^[A-Z]{2}[0-9]{6}$",
    "^(\\d{1,3}\\.){3}\\d{1,3}$",
    "^[a-z]+[a-z0-9]*$",
    "^\\w+@\\w+\\.\\w+$",
    "^(a|b|ab)*c$",
    "^[^\\n\\r]*$",
    "^[\\s\\S]{0,524288}$",
    "^wf_[a-z0-9-]{6,64}$",
    "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
    "^a{2,1000000}$",
    "abc",
    "",
]


class Rules:
    """A rule table as the converter keeps one: same body, same name."""

    def __init__(self) -> None:
        self.bodies: dict[str, str] = {}

    def add(self, body: str) -> str:
        for name, existing in self.bodies.items():
            if existing == body:
                return name
        name = f"r{len(self.bodies)}"
        self.bodies[name] = body
        return name

    def regex(self, text: str) -> str:
        """The GBNF ``repeat`` writes, as a Python regex over the letter x."""

        def rule(match: re.Match[str]) -> str:
            name = match.group(0)
            return f"(?:{self.regex(self.bodies[name])})" if name in self.bodies else name

        text = re.sub(r"r\d+", rule, text)
        return text.replace(" ", "").replace('""', "")


@pytest.mark.parametrize("block", [3, 4, 7])
def test_repeat_writes_exactly_the_bounds(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(grammar_repeat, "BLOCK", block)
    for lo in (0, 1, 2, 5, 9, 13):
        for hi in (lo, lo + 1, lo + 4, lo + 11, lo + 40, 70, None):
            if hi is not None and hi < lo:
                continue
            rules = Rules()
            item = rules.add("x")
            pattern = re.compile(rules.regex(grammar_repeat.repeat(item, lo, hi, rules.add)))
            top = (hi if hi is not None else lo) + 5
            accepted = [n for n in range(top + 1) if pattern.fullmatch("x" * n)]
            assert accepted == list(range(lo, (hi if hi is not None else top) + 1)), (lo, hi)


def test_huge_bounds_give_small_grammars() -> None:
    for schema in (
        {"type": "string", "maxLength": 524288},
        {"type": "string", "minLength": 999_999, "maxLength": 1_000_000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 10**6},
        {"type": "string", "pattern": "^[a-z]{0,1000000}$"},
    ):
        converter = SafeConverter()
        converter.visit(schema, "t")
        assert len(converter.format_grammar()) < 4000, schema


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_patterns_are_left_out(pattern: str) -> None:
    assert pattern_rule(pattern, Rules().add) is None


@pytest.mark.parametrize("pattern", ORDINARY)
def test_ordinary_patterns_become_grammars(pattern: str) -> None:
    assert pattern_rule(pattern, Rules().add) is not None


BOUND = st.integers(min_value=0, max_value=10**6)


def _schemas() -> st.SearchStrategy[dict[str, Any]]:
    string = st.builds(
        lambda lo, span, pattern: {
            "type": "string",
            **({"minLength": lo} if lo is not None else {}),
            **({"maxLength": lo + span} if lo is not None and span is not None else {}),
            **({"pattern": pattern} if pattern is not None else {}),
        },
        st.none() | BOUND,
        st.none() | BOUND,
        st.none() | st.sampled_from(PATHOLOGICAL + ORDINARY),
    )
    leaf = string | st.sampled_from(
        [
            {"type": "integer"},
            {"type": "number"},
            {"type": "boolean"},
            {"enum": ["a", "b"]},
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
            {"type": "integer", "multipleOf": 25, "maximum": 5000, "minimum": 0},
            {"type": "string", "format": "date-time", "maxLength": 25},
            {"type": "string", "format": "email"},
            {"type": ["string", "null"], "format": "date"},
        ]
    )

    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        array = st.builds(
            lambda items, lo, span: {
                "type": "array",
                "items": items,
                "minItems": lo,
                **({"maxItems": lo + span} if span is not None else {}),
            },
            children,
            st.integers(0, 10**6),
            st.none() | BOUND,
        )
        obj = st.builds(
            lambda props, n: {
                "type": "object",
                "properties": props,
                "required": sorted(props)[:n],
            },
            st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), children, max_size=4),
            st.integers(0, 4),
        )
        return array | obj | st.builds(lambda a, b: {"anyOf": [a, b]}, children, children)

    return st.recursive(leaf, extend, max_leaves=8).map(
        lambda s: s if s.get("type") == "object" else {"type": "object", "properties": {"v": s}}
    )


@pytest.fixture(scope="module")
def native() -> Any:
    from parley.engines.llamacpp import embedded_model_path
    from parley.engines.llamacpp.native import LlamaNative, NativeConfig

    n = LlamaNative(
        embedded_model_path(), NativeConfig(n_ctx=256, n_seq_max=1, n_batch=32, n_threads=1)
    )
    yield n
    n.close()


@pytest.mark.model
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas(), choice=st.sampled_from(["auto", "any"]))
def test_every_schema_gives_a_grammar_llama_cpp_accepts(
    native: Any, schema: dict[str, Any], choice: str
) -> None:
    conversation = Conversation(
        system=None, turns=(), tools=(ToolSpec("f", "", schema),), tool_choice=choice
    )
    grammar = grammar_for(conversation)
    assert grammar is not None
    assert len(grammar.text) < 200_000
    assert native.grammar_ok(grammar), grammar.text[:2000]


@pytest.mark.model
def test_a_refused_grammar_is_not_printed(native: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """llama.cpp prints a grammar it cannot parse, whole, to standard error:
    tool names and enum values, prompt text that logs must not hold."""
    from parley.engines.llamacpp.output import Grammar

    assert not native.grammar_ok(Grammar('root ::= "secret-tool-name" (unclosed'))
    assert native.grammar_ok(Grammar('root ::= "fine"'))
    assert "secret-tool-name" not in capfd.readouterr().err


@pytest.mark.model
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_fast_path_draws_what_the_whole_walk_draws(native: Any, temperature: float) -> None:
    """A grammar's sampler draws without the grammar and asks it about that token
    alone; only a refused token walks the vocabulary. Greedy, both give the same
    tokens; sampled (one seed), every token is one the grammar allows. The fast
    path is taken for most tokens of a JSON answer."""
    from parley.engines.llamacpp.native import Constrained
    from parley.engines.llamacpp.ops import BatchEntry

    schema = {
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 200}},
        "required": ["story"],
    }
    conversation = Conversation(
        system=None, turns=(Turn("user", (TextPart("Write a story as JSON."),)),),
        answer_schema=schema,
    )  # fmt: skip
    grammar = grammar_for(conversation)
    assert grammar is not None
    prompt = native.tokenize("<|im_start|>user\nA story as JSON.<|im_end|>\n", add_bos=False)

    def draw(fast: bool) -> tuple[list[int], Constrained]:
        sampler = native.new_sampler(
            temperature=temperature, top_p=None, top_k=None, seed=7, grammar=grammar
        )
        assert isinstance(sampler, Constrained)
        if not fast:
            sampler.free = None
        native.forget(0)
        native.decode([BatchEntry(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        out: list[int] = []
        for step in range(40):
            # The logits row: the prompt's last entry in its batch, then the one token.
            token = native.sample(sampler, len(prompt) - 1 if step == 0 else 0)
            out.append(token)
            native.decode([BatchEntry(token, len(prompt) + step, 0, True)])
        return out, sampler

    fast, used = draw(True)
    text = b"".join(native.piece(t) for t in fast).decode(errors="replace")
    assert text.startswith("{") and '"story"' in text, text
    assert used.walked < 10  # most tokens passed the grammar as drawn
    native.free_sampler(used)
    if temperature == 0.0:
        whole, walked = draw(False)
        assert whole == fast
        native.free_sampler(walked)

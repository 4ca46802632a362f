"""The tool-call grammar: the offered tools' JSON Schemas as one llama.cpp grammar.

One alternative per allowed tool name, written in the model's call syntax
(``output.FALLBACK`` or ``output.HERMES``); ``auto`` gets a lazy grammar that
wakes at the syntax's trigger, ``any``/``tool`` constrain from the first
token. Schemas go through ``grammar_json.SafeConverter`` (bounds of any size,
safe patterns); a grammar llama.cpp refuses is retried tool by tool, and a
refused tool is constrained to a JSON object only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from parley.conversation import Conversation, ToolSpec
from parley.engines.llamacpp.output import FALLBACK, CallSyntax, Grammar
from parley.errors import EngineError, InvalidRequestError, ParleyError

if TYPE_CHECKING:
    from parley.engines.llamacpp.vocab import LlamaVocab

log = logging.getLogger("parley.engine.tools")


def grammar_for(
    conv: Conversation,
    syntax: CallSyntax = FALLBACK,
    usable: Callable[[Grammar], bool] | None = None,
) -> Grammar | None:
    """The constraint for this request's output, in ``syntax``; None for free text.

    Tool calls and a structured answer (``output_config.format``) are one
    grammar: either may come when both are allowed. ``usable`` tells whether
    llama.cpp accepts a grammar. When it refuses the whole, each tool is tried
    alone and the ones it refuses are constrained to a JSON object only, so one
    schema never costs the request its tools (a strict tool or the answer
    format is refused instead: its guarantee would not hold)."""
    calls = bool(conv.tools) and conv.tool_choice != "none"
    answer = conv.answer_schema is not None and conv.tool_choice in ("auto", "none")
    if not calls and not answer:
        return None
    allowed = [t for t in conv.tools if conv.tool_choice != "tool" or t.name == conv.tool_name]
    if not calls:
        allowed = []
    _check_guarantees(conv, allowed, answer)
    grammar = _grammar(conv, syntax, allowed, set(), answer)
    if usable is None or usable(grammar):
        return grammar
    if answer and not usable(_grammar(conv, syntax, [], set(), answer)):
        raise InvalidRequestError(
            "output_config.format.schema: llama.cpp refused the grammar built from this schema"
        )
    plain = {
        i
        for i, tool in enumerate(allowed)
        if not usable(_grammar(conv, syntax, [tool], set(), False))
    }
    for i in sorted(plain):
        if allowed[i].strict:
            raise InvalidRequestError(
                f"tools.{conv.tools.index(allowed[i])}.input_schema: llama.cpp refused the "
                "grammar built from this schema, so `strict` cannot be guaranteed"
            )
    log.warning(
        "llama.cpp refused the grammar of some tool schemas; their inputs are constrained "
        "to a JSON object only",
        extra={"tools": len(plain)},
    )
    grammar = _grammar(conv, syntax, allowed, plain, answer)
    if not usable(grammar):
        raise EngineError("llama.cpp refused the grammar built from the tool schemas")
    return grammar


def _check_guarantees(conv: Conversation, allowed: list[ToolSpec], answer: bool) -> None:
    """A 400 naming the first schema feature a strict tool or the answer format
    asks for that the grammar would not enforce."""
    from parley.engines.llamacpp.grammar_strict import unguaranteed

    if answer:
        gaps = unguaranteed(conv.answer_schema, "output_config.format.schema")
        if gaps:
            raise InvalidRequestError(
                f"{gaps[0]}: structured outputs guarantee the answer validates; this schema "
                "feature cannot be guaranteed by parley"
            )
    for tool in allowed:
        if tool.strict:
            i = conv.tools.index(tool)
            gaps = unguaranteed(tool.input_schema, f"tools.{i}.input_schema")
            if gaps:
                raise InvalidRequestError(
                    f"{gaps[0]}: cannot be guaranteed for a tool with `strict: true`"
                )


def _grammar(
    conv: Conversation,
    syntax: CallSyntax,
    allowed: list[ToolSpec],
    plain: set[int],
    answer: bool,
) -> Grammar:
    from parley.engines.llamacpp.grammar_json import SafeConverter

    converter = SafeConverter()
    rules: list[str] = []
    choices: list[str] = []
    if answer:
        choices.append(_answer_rule(converter, conv.answer_schema))
    if allowed:
        rules.append(_call_rule(syntax, allowed, plain, converter))
        if answer or conv.tool_choice != "auto":
            rules.append(f"calls ::= {_literal(syntax.open)} call{_more(conv, syntax)}")
            choices.append("calls")
    body = converter.format_grammar()
    # JSON strings may not hold raw control characters; the converter's rule allows them.
    body = body.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
    either = " | ".join(choices)
    extra = "\n".join(rules)
    if answer and conv.thinking_budget is not None:
        # The reasoning is free; the grammar wakes when the model closes it.
        from parley.engines.llamacpp.output import THINK_CLOSE

        opening = THINK_CLOSE
        head = f"root ::= {_literal(opening)} lazy-rest\nlazy-rest ::= [ \\n]* ({either})"
        resume = Grammar(
            f"root ::= {either}\n{extra}\n{body}", "root", None, _syntax(allowed, syntax)
        )
        return Grammar(f"{head}\n{extra}\n{body}", "root", opening, resume.syntax, opening, resume)
    if not answer and conv.tool_choice == "auto":
        # Free text until the model opens a call.
        opening = syntax.open
        head = f"root ::= {_literal(opening)} lazy-rest\nlazy-rest ::= call{_more(conv, syntax)}"
        return Grammar(f"{head}\n{extra}\n{body}", "root", syntax.trigger, syntax, opening)
    return Grammar(f"root ::= {either}\n{extra}\n{body}", "root", None, _syntax(allowed, syntax))


def _syntax(allowed: list[ToolSpec], syntax: CallSyntax) -> CallSyntax | None:
    return syntax if allowed else None


def _more(conv: Conversation, syntax: CallSyntax) -> str:
    again = _literal(syntax.separator + syntax.open)
    return "" if conv.disable_parallel_tool_use else f" ({again} call)*"


def _call_rule(syntax: CallSyntax, allowed: list[ToolSpec], plain: set[int], converter: Any) -> str:
    """``call``: one alternative per tool, its name then its input."""
    alternatives = []
    for i, tool in enumerate(allowed):
        relaxed, unformatted = len(converter.relaxed), len(converter.unformatted)
        rule = None if i in plain else _tool_rule(converter, tool, i)
        if rule is None:  # a JSON object, nothing more
            rule = converter.visit({"type": "object"}, f"tool-{i}-any")
        if len(converter.relaxed) > relaxed:
            log.info(
                "a string pattern is too ambiguous or unsupported for a grammar; those "
                "strings are constrained by their length only",
                extra={"tool_index": i, "patterns": len(converter.relaxed) - relaxed},
            )
        if len(converter.unformatted) > unformatted:
            log.info(
                "a string format is not combined with that string's pattern or length "
                "bounds in a grammar; those strings keep the pattern or the bounds only",
                extra={"tool_index": i, "formats": len(converter.unformatted) - unformatted},
            )
        alternatives.append(f"{_literal(tool.name + syntax.name_end)} {rule}")
    return "call ::= (" + " | ".join(alternatives) + ") " + _literal(syntax.close)


def _answer_rule(converter: Any, schema: Any) -> str:
    """The rule of the answer's schema; a schema the converter cannot express is a 400."""
    try:
        resolved = converter.resolve_refs(_gbnf_safe(schema), "answer")
        return str(converter.visit(resolved, "answer"))
    except Exception as exc:
        raise InvalidRequestError(
            "output_config.format.schema: this schema cannot be expressed as a grammar "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _tool_rule(converter: Any, tool: ToolSpec, i: int) -> str | None:
    """The rule of one tool's input schema, or None when the converter cannot
    express it (it asserts on what it cannot)."""
    try:
        schema = converter.resolve_refs(_gbnf_safe(tool.input_schema), f"tool-{i}")
        return str(converter.visit(schema, f"tool-{i}"))
    except Exception as exc:
        log.warning(
            "tool schema not expressible as a grammar; its input is constrained to a "
            "JSON object only",
            extra={"tool_index": i, "error_type": type(exc).__name__},
        )
        return None


class GrammarCheck:
    """Remembers which grammars llama.cpp accepts (building one costs a parse)."""

    def __init__(self, size: int = 256) -> None:
        self._known: OrderedDict[str, bool] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def usable(self, native: LlamaVocab, grammar: Grammar) -> bool:
        key = hashlib.sha256(grammar.text.encode()).hexdigest()
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
        verdict = native.grammar_ok(grammar)
        with self._lock:
            self._known[key] = verdict
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return verdict


def _literal(text: str) -> str:
    return json.dumps(text)


# Keys that describe a schema without constraining it; a schema of only these
# (or an empty one) admits any JSON value.
ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_ONE = frozenset({"items", "additionalProperties", "not", "contains", "propertyNames"})
_ANY_VALUE: dict[str, Any] = {
    "anyOf": [{"type": t} for t in ("string", "number", "boolean", "object", "array", "null")]
}


def _gbnf_safe(schema: Any) -> Any:
    """A copy the converter accepts: annotations dropped, an unconstrained schema
    spelled out as any value, ``additionalProperties`` closed by default."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _gbnf_safe(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_gbnf_safe(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = _gbnf_safe(value)
        else:
            out[key] = value
    if not out:
        return dict(_ANY_VALUE)
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def too_slow(took: float, budget: float) -> ParleyError:
    """The error of a request whose grammar took ``took`` s for one token (over ``budget``)."""
    return InvalidRequestError(
        f"tools: decoding under the grammar of these tool input schemas is too slow "
        f"(one token took {took:.1f} s, the limit is {budget:g} s); simplify the "
        "schemas' patterns or bounds"
    )

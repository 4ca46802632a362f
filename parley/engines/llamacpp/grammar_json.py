"""JSON Schema to GBNF: llama-cpp-python's converter, made safe for any bound.

The upstream converter handles objects, unions, enums and ``$ref``; its
other cases are replaced here because their output explodes or freezes
llama.cpp's grammar matcher on inputs the API accepts, or admits values the
schema does not:

* ``minLength``/``maxLength`` and ``minItems``/``maxItems`` of any size are
  written with ``grammar_repeat.repeat`` (compact, one parse per length);
* a list of types keeps each branch's keywords (``maxLength`` of a nullable
  string; the upstream keeps only the type);
* bounded integers and numbers (``minimum``, ``maximum``, exclusive bounds,
  whole ``multipleOf``) are written by ``grammar_numeric``, exactly (the
  upstream leaves them out);
* string ``format``s are written by ``grammar_format`` (the upstream's date
  admitted 31 February and year 0000, its time exactly three fraction digits,
  and both dropped the string's length bounds); a format that a pattern or
  length bounds cut into is left out and recorded (``unformatted``);
* ``pattern`` goes through ``grammar_regex``, which refuses patterns that
  keep many parses alive (exponential matching) and constructs it cannot
  express; such a string keeps only its length bounds, and the converter
  records where (``relaxed``), so the caller can say so.
"""

from __future__ import annotations

from typing import Any

from llama_cpp import llama_grammar

from parley.engines.llamacpp.grammar_format import FORMATS, format_rule
from parley.engines.llamacpp.grammar_numeric import bounded, gbnf
from parley.engines.llamacpp.grammar_regex import pattern_rule
from parley.engines.llamacpp.grammar_repeat import repeat

_Base: Any = llama_grammar.SchemaConverter  # untyped upstream


class SafeConverter(_Base):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.relaxed: list[str] = []  # rule names whose pattern was left out
        self.unformatted: list[str] = []  # ... whose known format was left out

    def _named(self, body: str) -> str:
        """A rule holding ``body``; the same body always gets the same name."""
        for name, existing in self._rules.items():
            if existing == body:
                return str(name)
        return str(self._add_rule(f"rep{len(self._rules)}", body))

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = schema.get("type")
        if isinstance(kind, list) and not any(k in schema for k in ("anyOf", "oneOf")):
            # The upstream writes a list of types as bare {"type": t} branches,
            # dropping every other keyword (a nullable string lost its maxLength).
            branches = [{**schema, "type": t} for t in kind]
            return str(super().visit({"anyOf": branches}, name))
        rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
        plain = not any(key in schema for key in ("$ref", "oneOf", "anyOf", "const", "enum"))
        if plain and kind in (None, "string") and "pattern" in schema:
            body = pattern_rule(str(schema["pattern"]), self._named)
            if body is not None:
                if _known_format(schema):
                    self.unformatted.append(rule_name)  # the pattern holds, the format not
                return str(self._add_rule(rule_name, body + " space"))
            self.relaxed.append(rule_name)
            schema = {k: v for k, v in schema.items() if k != "pattern"} | {"type": "string"}
            kind = "string"
        if plain and (kind == "string" or (kind is None and _format_only(schema))):
            return self._string(schema, rule_name)
        if plain and kind in ("integer", "number") and (node := bounded(schema)) is not None:
            return str(self._add_rule(rule_name, gbnf(node) + " space"))
        items = schema.get("items")
        if plain and kind in (None, "array") and isinstance(items, dict):
            return self._array(schema, items, name, rule_name)
        return str(super().visit(schema, name))

    def _string(self, schema: dict[str, Any], rule_name: str) -> str:
        lo, hi = _bounds(schema, "minLength", "maxLength")
        if "format" in schema:
            body = format_rule(schema["format"], lo, hi, self._add_rule)
            if body is not None:
                return str(self._add_rule(rule_name, body + " space"))
            if _known_format(schema):
                self.unformatted.append(rule_name)
        char = self._add_primitive("char", llama_grammar.PRIMITIVE_RULES["char"])
        body = repeat(char, lo, hi, self._named)
        return str(self._add_rule(rule_name, f'"\\"" {body} "\\"" space'))

    def _array(self, schema: dict[str, Any], items: dict[str, Any], name: str, rule: str) -> str:
        item = self.visit(items, f"{name}{'-' if name else ''}item")
        lo, hi = _bounds(schema, "minItems", "maxItems")
        if hi is not None and hi < lo:
            hi = lo  # unsatisfiable as written: the smallest array asked for
        more = self._named(f'"," space {item}')
        rest = repeat(more, max(0, lo - 1), None if hi is None else max(0, hi - 1), self._named)
        inner = f"{item} {rest}".strip()
        if hi == 0:
            inner = ""
        elif lo == 0:
            inner = f"({inner})?"
        return str(self._add_rule(rule, f'"[" space {inner} "]" space'.replace("  ", " ")))


def _format_only(schema: dict[str, Any]) -> bool:
    """An untyped schema with a ``format`` and nothing of an object or array:
    written as that format's string (as the upstream did)."""
    other = ("properties", "additionalProperties", "items", "prefixItems", "allOf")
    return "format" in schema and not any(key in schema for key in other)


def _known_format(schema: dict[str, Any]) -> bool:
    value = schema.get("format")
    return isinstance(value, str) and value in FORMATS


def _bounds(schema: dict[str, Any], low: str, high: str) -> tuple[int, int | None]:
    lo = schema.get(low, 0)
    hi = schema.get(high)
    lo = lo if isinstance(lo, int) and not isinstance(lo, bool) and lo > 0 else 0
    if not isinstance(hi, int) or isinstance(hi, bool) or hi < 0:
        hi = None
    elif hi < lo:
        hi = lo
    return lo, hi

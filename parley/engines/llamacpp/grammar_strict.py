"""What parley's grammar guarantees of a JSON Schema, keyword by keyword.

A structured-output format and a ``strict: true`` tool promise that the
output validates. The grammar enforces most of JSON Schema exactly
(``grammar_json``); ``unguaranteed`` walks a schema and names every place
where it would not (a keyword the converter ignores or relaxes), so such a
request is refused up front instead of answered with JSON that may not
validate. Non-strict tools keep the documented degradation instead.
"""

from __future__ import annotations

from typing import Any

from parley.engines.llamacpp.grammar import ANNOTATIONS as _ANNOTATIONS
from parley.engines.llamacpp.grammar_format import FORMATS, format_rule
from parley.engines.llamacpp.grammar_numeric import exact
from parley.engines.llamacpp.grammar_regex import pattern_rule

_DEFS = frozenset({"$defs", "definitions"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "integer": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "boolean": frozenset(),
    "null": frozenset(),
}
_ANY_TYPE = frozenset().union(*_BY_TYPE.values())
# Formats that put no constraint on a string: "text" is what the SDKs write
# for a plain string (``transform_schema``).
_FREE_FORMATS = frozenset({"text"})


def unguaranteed(schema: Any, path: str) -> list[str]:
    """Where the grammar of ``schema`` would admit a value the schema refuses:
    ``path.keyword`` for each such place, in document order."""
    out: list[str] = []
    _walk(schema, path, out)
    return out


def _walk(schema: Any, path: str, out: list[str]) -> None:
    if isinstance(schema, bool):
        if schema is False:
            out.append(f"{path}: a `false` schema")
        return
    if not isinstance(schema, dict):
        return
    for key in _DEFS:
        for name, sub in (schema.get(key) or {}).items():
            _walk(sub, f"{path}.{key}.{name}", out)
    if "$ref" in schema:
        ref = schema["$ref"]
        if not (isinstance(ref, str) and ref.startswith("#")):
            out.append(f"{path}.$ref: only local references (#/...) are resolved")
        _extra(schema, {"$ref"}, path, out)
        return
    if "anyOf" in schema:
        for i, sub in enumerate(schema["anyOf"] or []):
            _walk(sub, f"{path}.anyOf.{i}", out)
        _extra(schema, {"anyOf", "type"}, path, out)
        return
    if "oneOf" in schema:
        out.append(f"{path}.oneOf: exactly one branch cannot be guaranteed (use anyOf)")
        return
    if "const" in schema or "enum" in schema:
        _extra(schema, {"const", "enum", "type"}, path, out)
        return
    if "allOf" in schema:
        for i, sub in enumerate(schema["allOf"] or []):
            if not (
                isinstance(sub, dict) and ("$ref" in sub or sub.get("type") in (None, "object"))
            ):
                out.append(f"{path}.allOf.{i}: only object schemas are merged")
            elif "$ref" not in sub:
                _walk(sub, f"{path}.allOf.{i}", out)
        _extra(schema, {"allOf", "type", "properties", "required"}, path, out)
        return
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    allowed: set[str] = {"type"}
    for k in kinds:
        allowed |= _BY_TYPE.get(k, _ANY_TYPE) if isinstance(k, str) else _ANY_TYPE
    _extra(schema, allowed, path, out)
    for name, sub in (schema.get("properties") or {}).items():
        _walk(sub, f"{path}.properties.{name}", out)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        _walk(extra, f"{path}.additionalProperties", out)
    items = schema.get("items")
    if isinstance(items, dict):
        _walk(items, f"{path}.items", out)
    for i, sub in enumerate(schema.get("prefixItems") or []):
        _walk(sub, f"{path}.prefixItems.{i}", out)
    if "prefixItems" in schema and isinstance(items, dict):
        out.append(f"{path}.prefixItems: not enforced beside an `items` schema")
    if any(k in (None, "string") for k in kinds):
        _string(schema, path, out)
    for k in kinds:
        if k in ("integer", "number") and not exact({**schema, "type": k}):
            out.append(f"{path}.multipleOf: only whole steps with a few multiples are enforced")
            break


def _string(schema: dict[str, Any], path: str, out: list[str]) -> None:
    """What ``grammar_json.SafeConverter`` leaves out of a string: a pattern it
    cannot follow, a format beside an enforced pattern, a format it does not
    write or whose lengths the bounds cut into (the bounds then hold)."""
    fmt = schema.get("format")
    if "pattern" in schema:
        if pattern_rule(str(schema["pattern"]), lambda body: "x") is None:
            out.append(f"{path}.pattern: too ambiguous or unsupported for a grammar")
        elif fmt in FORMATS:
            out.append(f"{path}.format: not enforced together with `pattern`")
            return
    if fmt is None or fmt in _FREE_FORMATS:
        return
    if fmt not in FORMATS:
        out.append(f"{path}.format: the format '{fmt}' is not enforced by parley's grammar")
        return
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    if format_rule(fmt, lo if isinstance(lo, int) else 0, hi, lambda name, body: name) is None:
        out.append(f"{path}.format: '{fmt}' is not enforced within these length bounds")


def _extra(schema: dict[str, Any], allowed: set[str], path: str, out: list[str]) -> None:
    for key in schema:
        if key not in allowed and key not in _ANNOTATIONS and key not in _DEFS:
            out.append(f"{path}.{key}: not enforced by parley's grammar")

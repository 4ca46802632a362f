"""What a strict tool or an answer format may ask for: every keyword the grammar
would leave out is named (no model; ``grammar_strict.unguaranteed``), and a
schema with none builds a grammar in which the converter relaxed nothing."""

from __future__ import annotations

from typing import Any

import pytest

from parley.engines.llamacpp.grammar_json import SafeConverter
from parley.engines.llamacpp.grammar_strict import unguaranteed

GAPS: list[tuple[dict[str, Any], list[str]]] = [
    ({"type": "string", "format": "email"}, []),
    ({"type": "string", "format": "email", "maxLength": 20}, ["s.format"]),
    ({"type": "string", "format": "uri"}, ["s.format"]),
    ({"type": "string", "format": "text", "maxLength": 5}, []),
    ({"type": "string", "pattern": "^[a-z]+$", "format": "date"}, ["s.format"]),
    ({"type": "string", "pattern": "(a?){50}"}, ["s.pattern"]),
    ({"type": "integer", "multipleOf": 7}, ["s.multipleOf"]),
    ({"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100}, []),
    ({"type": "number", "multipleOf": 0.1}, ["s.multipleOf"]),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, []),
    ({"type": ["integer", "null"], "minimum": 1}, []),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
     ["s.prefixItems"]),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, ["s.uniqueItems"]),
    ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, ["s.properties.a.not"]),
    ({"type": "object", "minProperties": 1}, ["s.minProperties"]),
    ({"type": "object", "patternProperties": {"^x": {}}}, ["s.patternProperties"]),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ["s.oneOf"]),
    ({"anyOf": [{"type": "string"}, {"type": "integer", "uniqueItems": True}], "title": "t"},
     ["s.anyOf.1.uniqueItems"]),
    ({"$ref": "https://example.com/s.json"}, ["s.$ref"]),
    ({"$defs": {"x": {"type": "string", "format": "uri"}}, "$ref": "#/$defs/x"},
     ["s.$defs.x.format"]),
    ({"enum": ["a", "b"], "description": "d"}, []),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}]}, []),
    ({"allOf": [{"type": "string"}]}, ["s.allOf.0"]),
    (
        {
            "type": "object",
            "properties": {
                "day": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "n": {"type": "integer", "minimum": 1, "maximum": 9},
                "x": {"type": "number", "exclusiveMaximum": 10},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            },
            "required": ["day"],
            "additionalProperties": False,
        },
        [],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "where"), GAPS, ids=[str(i) for i in range(len(GAPS))])
def test_every_unenforced_keyword_is_named(schema: dict[str, Any], where: list[str]) -> None:
    gaps = unguaranteed(schema, "s")
    assert [g.split(":")[0] for g in gaps] == where


@pytest.mark.parametrize(
    "schema", [s for s, where in GAPS if not where], ids=lambda s: str(sorted(s))[:40]
)
def test_a_schema_without_gaps_is_written_whole(schema: dict[str, Any]) -> None:
    """Where nothing is named, the converter relaxed no pattern and dropped no format."""
    converter = SafeConverter()
    converter.visit(converter.resolve_refs(schema, "answer"), "answer")
    converter.format_grammar()
    assert converter.relaxed == [] and converter.unformatted == []

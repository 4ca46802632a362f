"""Context editing and compaction through an upstream engine (parley in front of a
real llama-server): the edits, counts and generations are parley's, so the
figures hold there as on the embedded engine. Bounded by small ``max_tokens``."""

from __future__ import annotations

from typing import Any

from tests.conftest import MODEL, Server
from tests.test_compaction import HISTORY, compact, summarising
from tests.test_context_management import LOW, TOOLS, tool_history

BETAS = ["context-management-2025-06-27", "compact-2026-01-12"]


def test_clearing_tool_results_counts_exactly_through_llama_server(upstream_server: Server) -> None:
    client = upstream_server.client()
    messages: Any = tool_history(5)
    edit: Any = {
        "edits": [
            {
                "type": "clear_tool_uses_20250919",
                "trigger": LOW,
                "keep": {"type": "tool_uses", "value": 1},
            }
        ]
    }
    common: dict[str, Any] = {"model": MODEL, "messages": messages, "tools": TOOLS, "betas": BETAS}
    plain = client.beta.messages.count_tokens(**common).input_tokens
    counted = client.beta.messages.count_tokens(**common, context_management=edit)
    assert counted.context_management is not None
    assert counted.context_management.original_input_tokens == plain
    assert counted.input_tokens < plain
    message = client.beta.messages.create(
        **common, max_tokens=4, context_management=edit, extra_body={"temperature": 0.0}
    )
    usage = message.usage
    total = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert total + (usage.cache_creation_input_tokens or 0) == counted.input_tokens
    assert message.context_management is not None
    (applied,) = message.context_management.applied_edits
    assert applied.type == "clear_tool_uses_20250919"
    assert applied.cleared_tool_uses == 4
    assert applied.cleared_input_tokens == plain - counted.input_tokens


def test_compaction_through_llama_server(upstream_server: Server) -> None:
    client = upstream_server.client()
    kwargs: dict[str, Any] = {"model": MODEL, "extra_body": {"temperature": 0.0}, "betas": BETAS}
    message = client.beta.messages.create(
        max_tokens=8, messages=HISTORY, context_management=compact(), **kwargs
    )
    block = message.content[0]
    assert block.type == "compaction"
    assert message.usage.iterations is not None
    summary, answer = message.usage.iterations
    assert summary.output_tokens <= 8 and answer.output_tokens == message.usage.output_tokens
    summarised = client.beta.messages.count_tokens(
        model=MODEL, messages=summarising(HISTORY), betas=BETAS
    ).input_tokens
    cached = summary.cache_read_input_tokens or 0
    assert summary.input_tokens + cached + (summary.cache_creation_input_tokens or 0) == summarised

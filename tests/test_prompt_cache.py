"""Prompt caching: KV state kept at cache_control breakpoints, and usage that adds up.

The cache's bookkeeping (TTL, LRU budget, pins, the API's accounting) is
tested directly with an injected clock; the rest end to end on the embedded
model through the SDK: a second request sharing a cached prefix reads it,
decodes exactly as a cold one, and every usage adds up to count_tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from parley.engines.base import CacheUsage
from parley.engines.llamacpp.prefix_cache import Breakpoint, PrefixCache
from tests.conftest import MODEL, Server

# --- the cache itself, with an injected clock ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(budget: int = 1000, min_tokens: int = 1) -> tuple[PrefixCache, Clock]:
    clock = Clock()
    return PrefixCache(budget_bytes=budget, min_tokens=min_tokens, clock=clock), clock


TOKENS = list(range(100, 400))


def test_first_request_writes_up_to_its_last_breakpoint() -> None:
    cache, _ = make_cache()
    plan = cache.plan(TOKENS, [Breakpoint(50, "1h"), Breakpoint(120)])
    assert plan.read is None
    assert plan.usage == CacheUsage(read=0, created_1h=50, created_5m=70)
    assert [b.pos for b in plan.writes] == [50, 120]


def test_longest_cached_prefix_is_read_and_the_rest_written() -> None:
    cache, _ = make_cache()
    assert cache.put(TOKENS[:50], "kv50", 10, "5m")
    assert cache.put(TOKENS[:120], "kv120", 10, "5m")
    plan = cache.plan(TOKENS, [Breakpoint(120), Breakpoint(200)])
    assert plan.read is not None and plan.read.state == "kv120"
    assert plan.usage == CacheUsage(read=120, created_5m=80)
    assert [b.pos for b in plan.writes] == [200]
    # A prefix that diverges inside an entry does not read it.
    other = TOKENS[:60] + [1] * 100
    assert cache.plan(other, [Breakpoint(150)]).usage == CacheUsage(read=50, created_5m=100)


def test_entries_past_the_last_breakpoint_or_without_breakpoints_are_not_read() -> None:
    cache, _ = make_cache()
    cache.put(TOKENS[:120], "kv", 10, "5m")
    assert cache.plan(TOKENS, []).usage == CacheUsage()
    assert cache.plan(TOKENS, [Breakpoint(100)]).usage == CacheUsage(created_5m=100)


def test_breakpoints_below_the_minimum_write_nothing() -> None:
    cache, _ = make_cache(min_tokens=100)
    plan = cache.plan(TOKENS, [Breakpoint(60), Breakpoint(150, "1h")])
    assert plan.usage == CacheUsage(created_1h=150)
    assert [b.pos for b in plan.writes] == [150]
    assert cache.plan(TOKENS, [Breakpoint(60)]).usage == CacheUsage()


def test_ttl_expiry_and_refresh_on_hit() -> None:
    cache, clock = make_cache()
    cache.put(TOKENS[:100], "a", 10, "5m")
    cache.put(TOKENS[:200], "b", 10, "1h")
    clock.now += 299
    first = cache.plan(TOKENS[:150], [Breakpoint(150)])  # a hit refreshes the 5m entry
    assert first.usage.read == 100
    cache.release(first)
    clock.now += 299  # 598 s after writing, 299 s after the hit
    second = cache.plan(TOKENS[:150], [Breakpoint(150)])
    assert second.usage.read == 100
    clock.now += 301  # past five minutes since the last hit, but pinned by a waiting request
    assert cache.stats()["entries"] == 2
    cache.release(second)
    again = cache.plan(TOKENS[:150], [Breakpoint(150)])
    assert again.usage.read == 0
    hour = cache.plan(TOKENS, [Breakpoint(250)])
    assert hour.usage.read == 200  # the 1h entry lives on
    cache.release(hour)
    clock.now += 3601
    assert cache.plan(TOKENS, [Breakpoint(250)]).usage.read == 0
    assert cache.stats()["expired"] == 2


def test_budget_evicts_least_recently_used_but_never_a_pinned_entry() -> None:
    cache, _ = make_cache(budget=30)
    cache.put(TOKENS[:10], "a", 10, "5m")
    cache.put(TOKENS[:20], "b", 10, "5m")
    cache.put(TOKENS[:30], "c", 10, "5m")
    pinned = cache.plan(TOKENS, [Breakpoint(10)])  # reads "a", which becomes most recent
    assert pinned.usage.read == 10
    assert cache.put(TOKENS[:40], "d", 10, "5m")  # evicts "b", the least recently used
    probe = cache.plan(TOKENS[:25], [Breakpoint(25)])
    assert probe.usage.read == 10
    cache.release(probe)
    assert not cache.put(TOKENS[:50], "e", 40, "5m")  # larger than the whole budget
    assert cache.put(TOKENS[:60], "f", 30, "5m") is False  # "a" is pinned: no room
    assert cache.stats()["entries"] == 3  # and nothing was evicted in vain
    cache.release(pinned)
    assert cache.put(TOKENS[:60], "f", 30, "5m")
    assert cache.stats()["entries"] == 1


def test_writing_a_prefix_twice_keeps_one_entry_with_the_longer_ttl() -> None:
    cache, clock = make_cache()
    cache.put(TOKENS[:100], "a", 10, "5m")
    assert not cache.wants(TOKENS[:100]) and cache.wants(TOKENS[:101])
    cache.put(TOKENS[:100], None, 0, "1h")
    clock.now += 1000
    assert cache.plan(TOKENS, [Breakpoint(150)]).usage.read == 100
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] == 10


# --- end to end on the embedded model ----------------------------------------------


SYSTEM = " ".join(
    f"Rule {i}: answer the user about {topic} briefly, politely and with one example."
    for i, topic in enumerate(
        ["ships", "birds", "rivers", "clouds", "maps", "stones", "trains", "bread"] * 3
    )
)


@pytest.fixture(scope="module")
def cache_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--cache-min-tokens", "128", "--parallel", "4")


def usage_total(usage: Any) -> int:
    return int(
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    )


def create(client: anthropic.Anthropic, **body: Any) -> Any:
    return client.messages.create(
        model=MODEL, max_tokens=24, extra_body={"temperature": 0.0}, **body
    )


def counted(client: anthropic.Anthropic, **body: Any) -> int:
    return client.messages.count_tokens(model=MODEL, **body).input_tokens


def cached_system(ttl: str = "5m") -> list[dict[str, Any]]:
    return [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


@pytest.mark.model
def test_second_request_reads_the_cached_prefix_and_decodes_the_same(cache_server: Server) -> None:
    client = cache_server.client()
    question = [{"role": "user", "content": "Tell me about ships."}]
    cold_body = {"system": SYSTEM, "messages": question}  # no breakpoint: nothing cached
    cold = create(client, **cold_body)
    assert cold.usage.cache_creation_input_tokens == 0 and cold.usage.cache_read_input_tokens == 0

    first = create(client, system=cached_system(), messages=question)
    written = first.usage.cache_creation_input_tokens
    assert written > 128
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
    assert first.usage.cache_read_input_tokens == 0
    assert usage_total(first.usage) == counted(client, system=cached_system(), messages=question)
    assert cache_server.wait_idle(MODEL)["prompt_cache"]["entries"] == 1

    # Another question after the same system prompt: the prefix comes from the cache.
    other = [{"role": "user", "content": "Tell me about trains."}]
    second = create(client, system=cached_system(), messages=other)
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens == 0
    assert usage_total(second.usage) == counted(client, system=cached_system(), messages=other)
    stats = cache_server.wait_idle(MODEL)["prompt_cache"]
    assert stats["hits"] >= 1 and stats["entries"] == 1

    # Restored KV decodes exactly as a cold prefill (greedy).
    again = create(client, system=cached_system(), messages=question)
    assert again.usage.cache_read_input_tokens == written
    assert [b.model_dump() for b in again.content] == [b.model_dump() for b in first.content]
    assert [b.model_dump() for b in again.content] == [b.model_dump() for b in cold.content]


@pytest.mark.model
def test_streamed_usage_reports_the_cache_at_message_start(cache_server: Server) -> None:
    client = cache_server.client()
    messages = [{"role": "user", "content": "Tell me about bread."}]
    create(client, system=cached_system(), messages=messages)  # make sure it is written
    with client.messages.stream(
        model=MODEL,
        max_tokens=16,
        system=cached_system(),
        messages=messages,
        extra_body={"temperature": 0.0},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.cache_read_input_tokens > 128
    assert final.usage.cache_read_input_tokens == start.message.usage.cache_read_input_tokens
    assert usage_total(final.usage) == counted(client, system=cached_system(), messages=messages)


@pytest.mark.model
def test_a_growing_conversation_reads_its_previous_turn(cache_server: Server) -> None:
    """Claude Code's pattern: the breakpoint moves to the newest user turn each request."""
    client = cache_server.client()

    def marked(text: str) -> dict[str, Any]:
        block = {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}
        return {"role": "user", "content": [block]}

    first_turn = [marked(SYSTEM + " Now: what is a ship?")]
    first = create(client, messages=first_turn)
    assert first.usage.cache_read_input_tokens == 0
    written = first.usage.cache_creation_input_tokens
    assert written > 128
    reply = "".join(b.text for b in first.content if b.type == "text") or "ok"
    plain_first = {
        "role": "user",
        "content": [{"type": "text", "text": first_turn[0]["content"][0]["text"]}],
    }
    second_turn = [plain_first, {"role": "assistant", "content": reply}, marked("And a train?")]
    second = create(client, messages=second_turn)
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens > 0  # the new turn is written too
    assert usage_total(second.usage) == counted(client, messages=second_turn)


@pytest.mark.model
def test_usage_adds_up_over_a_matrix_of_breakpoints(cache_server: Server) -> None:
    client = cache_server.client()
    tools = [
        {
            "name": "lookup",
            "description": "Look a word up. " + SYSTEM[:400],
            "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
        }
    ]
    marked_tools = [{**tools[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    user = [{"role": "user", "content": "Tell me about maps."}]
    marked_user = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Tell me about maps.",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        }
    ]
    cases: list[dict[str, Any]] = [
        {"system": SYSTEM, "messages": user},
        {"system": cached_system("1h"), "messages": user},
        {"system": cached_system("1h"), "messages": marked_user},
        {"system": SYSTEM, "messages": user, "tools": marked_tools},
        {
            "system": SYSTEM,
            "messages": user,
            "tools": tools,
            "cache_control": {"type": "ephemeral"},
        },
        {"system": cached_system(), "messages": marked_user, "tools": marked_tools},
    ]
    for body in cases * 2:  # cold, then warm
        message = create(client, **body)
        usage = message.usage
        assert usage_total(usage) == counted(client, **body), body
        created = usage.cache_creation
        assert created is not None
        assert (
            created.ephemeral_5m_input_tokens + created.ephemeral_1h_input_tokens
            == usage.cache_creation_input_tokens
        )
        assert min(usage.input_tokens, usage.cache_read_input_tokens) >= 0
        if "cache_control" not in str(body):
            assert usage.cache_creation_input_tokens == usage.cache_read_input_tokens == 0


@pytest.mark.model
def test_billing_line_changes_do_not_break_the_cached_prefix(cache_server: Server) -> None:
    client = cache_server.client()

    def system(cch: str) -> list[dict[str, Any]]:
        billing = f"x-anthropic-billing-header: cc_version=2.1.0; cc_entrypoint=cli; cch={cch};"
        return [
            {"type": "text", "text": billing},
            {
                "type": "text",
                "text": SYSTEM + " (billing test)",
                "cache_control": {"type": "ephemeral"},
            },
        ]

    user = [{"role": "user", "content": "Tell me about stones."}]
    first = create(client, system=system("a1b2c"), messages=user)
    second = create(client, system=system("99f0e"), messages=user)
    assert first.usage.cache_creation_input_tokens > 128
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


@pytest.mark.model
def test_a_cache_entry_is_restored_into_a_slot_that_held_other_work(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--cache-min-tokens", "128", "--parallel", "1")
    client = server.client()
    question = [{"role": "user", "content": "Tell me about clouds."}]
    first = create(client, system=cached_system(), messages=question)
    # Unrelated work takes the only slot, so its cells no longer hold the prefix.
    create(client, messages=[{"role": "user", "content": "Say hello."}])
    second = create(client, system=cached_system(), messages=question)
    stats = server.wait_idle(MODEL)
    assert stats["cache_restores"] == 1 and stats["cache_snapshots"] == 1
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert first.usage.output_tokens > 0
    assert [b.model_dump() for b in second.content] == [b.model_dump() for b in first.content]
    # The restored cells are accounted like any others: none leaked.
    slot = stats["slots"][0]
    assert slot["kv_pos_max"] == slot["cached"] - 1

"""Compaction (beta ``compact-2026-01-12``) through the SDK's beta surface.

The scripted engine echoes the last user text, so a summary is exactly the
summarising prompt's turn and every figure can be checked against count_tokens
of a conversation written by hand; one run on the embedded model checks the
protocol and the arithmetic where the summary is the model's own.
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import pytest

from parley.compaction import SUMMARY_MAX_TOKENS
from parley.conversation.compaction import DEFAULT_PROMPT, SUMMARY_HEADER
from tests.conftest import MODEL, Server, beta_batch_result

BETA = ["compact-2026-01-12", "context-management-2025-06-27"]
QUESTION = "tell me about the harbour"
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "the harbour has three piers and a lighthouse"},
    {"role": "assistant", "content": "noted: three piers, one lighthouse"},
    {"role": "user", "content": QUESTION},
]
LOW = {"type": "input_tokens", "value": 1}  # any prompt exceeds it


def compact(**options: Any) -> dict[str, Any]:
    return {"edits": [{"type": "compact_20260112", "trigger": LOW, **options}]}


@pytest.fixture(scope="module")
def client(scripted_server: Server) -> anthropic.Anthropic:
    return scripted_server.client()


def create(client: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return client.beta.messages.create(
        model="scripted", max_tokens=512, messages=messages, betas=BETA, **extra
    )


def count(client: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> int:
    counted = client.beta.messages.count_tokens(
        model="scripted", messages=messages, betas=BETA, **extra
    )
    return counted.input_tokens


def summarising(messages: list[dict[str, Any]], prompt: str = DEFAULT_PROMPT) -> list[dict]:
    """``messages`` with the summarising prompt asked last, as parley asks it."""
    out = copy.deepcopy(messages)
    out[-1]["content"] = [
        {"type": "text", "text": out[-1]["content"]},
        {"type": "text", "text": prompt},
    ]
    return out


def echoed(messages: list[dict[str, Any]]) -> str:
    """What the scripted engine answers: the last user turn's text."""
    content = messages[-1]["content"]
    return content if isinstance(content, str) else "\n\n".join(b["text"] for b in content)


# --- compacting ---------------------------------------------------------------------


def test_below_the_trigger_nothing_is_compacted(client: anthropic.Anthropic) -> None:
    trigger = {"type": "input_tokens", "value": 10_000}
    message = create(client, HISTORY, context_management=compact(trigger=trigger))
    assert [b.type for b in message.content] == ["text"]
    assert message.usage.iterations is None
    assert message.usage.input_tokens == count(client, HISTORY)


def test_pause_returns_the_summary_alone(client: anthropic.Anthropic) -> None:
    message = create(client, HISTORY, context_management=compact(pause_after_compaction=True))
    assert message.stop_reason == "compaction"
    [block] = message.content
    assert block.type == "compaction"
    assert block.content == echoed(summarising(HISTORY))
    assert block.signature
    [iteration] = message.usage.iterations
    assert iteration.type == "compaction"
    assert iteration.input_tokens == count(client, summarising(HISTORY))
    assert iteration.output_tokens == len(block.content.split())
    # The compaction's tokens are not the message's (the SDK's iterations doc).
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)


def test_the_answer_follows_on_the_summary(client: anthropic.Anthropic) -> None:
    message = create(client, HISTORY, context_management=compact())
    assert message.stop_reason == "end_turn"
    summary, answer = message.content
    assert summary.type == "compaction" and answer.type == "text"
    # The scripted answer echoes the last user turn: the summary parley put there.
    assert answer.text == SUMMARY_HEADER + summary.content
    compaction, iteration = message.usage.iterations
    assert compaction.type == "compaction" and iteration.type == "message"
    assert compaction.input_tokens == count(client, summarising(HISTORY))
    assert compaction.output_tokens == len(summary.content.split())
    # The top level is the answer's, and the answer's prompt is the block sent back.
    sent_back = [{"role": "assistant", "content": [summary.model_dump(exclude_none=True)]}]
    assert message.usage.input_tokens == iteration.input_tokens == count(client, sent_back)
    assert message.usage.output_tokens == iteration.output_tokens == len(answer.text.split())


def test_instructions_are_added_to_the_prompt(client: anthropic.Anthropic) -> None:
    edits = compact(pause_after_compaction=True, instructions="Keep the pier count.")
    [block] = create(client, HISTORY, context_management=edits).content
    prompt = f"{DEFAULT_PROMPT}\n\nKeep the pier count."
    assert block.content == echoed(summarising(HISTORY, prompt))


def test_the_compaction_parameter_only_compacts(client: anthropic.Anthropic) -> None:
    message = create(client, HISTORY, compaction={"type": "summarize", "instructions": "Be brief."})
    assert message.stop_reason == "compaction"
    [block] = message.content
    assert block.content == echoed(summarising(HISTORY, "Be brief."))
    blank = create(client, HISTORY, compaction={"type": "summarize", "instructions": "  "})
    assert blank.content[0].content == echoed(summarising(HISTORY))


def test_the_summary_is_bounded(client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": " ".join(f"w{i}" for i in range(SUMMARY_MAX_TOKENS * 2))}]
    message = create(client, long, compaction={"type": "summarize"})
    [iteration] = message.usage.iterations
    assert iteration.output_tokens == SUMMARY_MAX_TOKENS
    assert len(message.content[0].content.split()) == SUMMARY_MAX_TOKENS
    # ... and by the request's max_tokens, which bounds each generation it makes.
    small = client.beta.messages.create(
        model="scripted", max_tokens=5, messages=long, betas=BETA, compaction={"type": "summarize"}
    )
    assert small.usage.iterations[0].output_tokens == 5


def test_streamed_events_and_the_final_message(client: anthropic.Anthropic) -> None:
    whole = create(client, HISTORY, context_management=compact())
    with client.beta.messages.stream(
        model="scripted",
        max_tokens=512,
        messages=HISTORY,
        betas=BETA,
        context_management=compact(),
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in events]
    raw = {"message_start", "content_block_start", "content_block_delta", "content_block_stop"}
    # The SDK's own events (text, compaction...) are left out, and so are pings.
    kinds = [k for k in kinds if k[0] in raw | {"message_delta", "message_stop"}]
    first_text = kinds.index(("content_block_start", None), 2)
    assert kinds[:first_text] == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "compaction_delta"),
        ("content_block_stop", None),
    ]
    assert kinds[-2:] == [("message_delta", None), ("message_stop", None)]
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "compaction" and start.content_block.content is None
    assert start.content_block.signature == whole.content[0].signature
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.iterations == whole.usage.iterations
    assert [b.model_dump(exclude={"parsed_output"}) for b in final.content] == [
        b.model_dump() for b in whole.content
    ]
    assert final.usage.model_dump() == whole.usage.model_dump()


# --- sending the block back ---------------------------------------------------------


def test_round_trip_renders_the_summary_in_place(client: anthropic.Anthropic) -> None:
    message = create(client, HISTORY, context_management=compact())
    history = [
        *HISTORY,
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content],
        },
        {"role": "user", "content": "and the lighthouse?"},
    ]
    again = create(client, history)
    assert again.content[0].text == "and the lighthouse?"
    by_hand = [
        {"role": "user", "content": SUMMARY_HEADER + message.content[0].content},
        {"role": "assistant", "content": message.content[1].text},
        {"role": "user", "content": "and the lighthouse?"},
    ]
    assert again.usage.input_tokens == count(client, history) == count(client, by_hand)
    full = [*HISTORY, *by_hand[1:]]
    assert again.usage.input_tokens < count(client, full) + len(message.content[0].content.split())


def test_the_paused_block_continues_alone(client: anthropic.Anthropic) -> None:
    paused = create(client, HISTORY, context_management=compact(pause_after_compaction=True))
    block = paused.content[0].model_dump(exclude_none=True)
    answer = create(client, [{"role": "assistant", "content": [block]}])
    assert answer.content[0].text == SUMMARY_HEADER + block["content"]


def test_a_tampered_block_is_refused(client: anthropic.Anthropic) -> None:
    paused = create(client, HISTORY, context_management=compact(pause_after_compaction=True))
    block = paused.content[0].model_dump(exclude_none=True)
    block["content"] += " and a fourth pier"
    messages = [{"role": "assistant", "content": [block]}, {"role": "user", "content": "go on"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, messages)
    assert caught.value.error_code == "compaction_signature_invalid"
    assert "messages.0.content.0.signature" in caught.value.message
    with pytest.raises(anthropic.BadRequestError):
        count(client, messages)


def test_a_thinking_signature_is_no_compaction_signature(client: anthropic.Anthropic) -> None:
    paused = create(client, HISTORY, context_management=compact(pause_after_compaction=True))
    signature = paused.content[0].signature
    thinking = [{"type": "thinking", "thinking": paused.content[0].content, "signature": signature}]
    messages = [*HISTORY, {"role": "assistant", "content": thinking}]
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        count(client, [*messages, {"role": "user", "content": "go on"}])


def test_a_block_without_content_is_a_no_op(client: anthropic.Anthropic) -> None:
    void = {"type": "compaction", "content": None}
    with_void = [
        *HISTORY,
        {"role": "assistant", "content": [void, {"type": "text", "text": "hi"}]},
        {"role": "user", "content": "next"},
    ]
    plain = [*HISTORY, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "next"}]
    assert count(client, with_void) == count(client, plain)
    assert create(client, with_void).usage.input_tokens == count(client, plain)
    # A message of nothing else renders as nothing: the user turns around it merge.
    alone = [*HISTORY, {"role": "assistant", "content": [void]}, {"role": "user", "content": "x"}]
    texts = [{"type": "text", "text": QUESTION}, {"type": "text", "text": "x"}]
    assert count(client, alone) == count(
        client, [*HISTORY[:-1], {"role": "user", "content": texts}]
    )


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"type": "compaction", "content": ""}, "content.0.content: empty string"),
        (
            {"type": "compaction", "content": "x", "signature": "s", "encrypted_content": "e"},
            "encrypted_content",
        ),
    ],
)
def test_malformed_blocks(client: anthropic.Anthropic, block: dict[str, Any], needle: str) -> None:
    messages = [{"role": "assistant", "content": [block]}, {"role": "user", "content": "go"}]
    with pytest.raises(anthropic.BadRequestError, match=needle):
        count(client, messages)


def test_a_block_in_a_user_message_is_misplaced(client: anthropic.Anthropic) -> None:
    paused = create(client, HISTORY, context_management=compact(pause_after_compaction=True))
    block = paused.content[0].model_dump(exclude_none=True)
    with pytest.raises(anthropic.BadRequestError) as caught:
        count(client, [{"role": "user", "content": [block, {"type": "text", "text": "go"}]}])
    assert caught.value.error_code == "compaction_block_misplaced"


# --- the rest of the request ----------------------------------------------------------


def test_count_tokens_counts_the_request_as_sent(client: anthropic.Anthropic) -> None:
    plain = count(client, HISTORY)
    assert count(client, HISTORY, compaction={"type": "summarize"}) == plain
    counted = client.beta.messages.count_tokens(
        model="scripted", messages=HISTORY, betas=BETA, context_management=compact()
    )
    assert counted.input_tokens == plain
    assert counted.context_management.original_input_tokens == plain


def test_compaction_and_context_management_do_not_combine(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="cannot be combined"):
        create(client, HISTORY, compaction={"type": "summarize"}, context_management=compact())


def test_a_prefill_cannot_be_compacted(client: anthropic.Anthropic) -> None:
    messages = [*HISTORY, {"role": "assistant", "content": "The harbour"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, messages, compaction={"type": "summarize"})
    assert caught.value.error_code == "compaction_incomplete_turn"


def test_models_say_compaction_is_supported(client: anthropic.Anthropic) -> None:
    model = client.beta.models.retrieve("scripted")
    assert model.capabilities.context_management.compact_20260112.supported
    assert model.capabilities.compaction.supported
    assert model.capabilities.compaction.summarize.supported


def test_batch_results_carry_the_compaction(client: anthropic.Anthropic) -> None:
    params = {
        "model": "scripted",
        "max_tokens": 512,
        "messages": HISTORY,
        "context_management": compact(),
    }
    item = beta_batch_result(client, "c", params, BETA)
    assert item.result.type == "succeeded"
    message = item.result.message
    direct = create(client, HISTORY, context_management=compact())
    assert message.content == direct.content
    assert message.usage.iterations == direct.usage.iterations


# --- the real model -----------------------------------------------------------------


def test_the_embedded_model_compacts(embedded_server: Server) -> None:
    """SmolLM2-135M summarises poorly; the protocol and the arithmetic must hold."""
    client = embedded_server.client()
    kwargs: dict[str, Any] = {"model": MODEL, "extra_body": {"temperature": 0.0}, "betas": BETA}
    message = client.beta.messages.create(
        max_tokens=8, messages=HISTORY, context_management=compact(), **kwargs
    )
    summary = message.content[0]
    assert summary.type == "compaction"
    compaction, answer = message.usage.iterations
    assert compaction.output_tokens <= 8  # the request's max_tokens bounds the summary too
    summarised = client.beta.messages.count_tokens(
        model=MODEL, messages=summarising(HISTORY), betas=BETA
    ).input_tokens
    assert compaction.input_tokens + compaction.cache_read_input_tokens == summarised
    assert answer.output_tokens == message.usage.output_tokens <= 8
    if summary.content is not None:
        sent_back = [{"role": "assistant", "content": [summary.model_dump(exclude_none=True)]}]
        prompt = client.beta.messages.count_tokens(model=MODEL, messages=sent_back, betas=BETA)
        usage = message.usage
        total = usage.input_tokens + usage.cache_read_input_tokens
        assert total + usage.cache_creation_input_tokens == prompt.input_tokens

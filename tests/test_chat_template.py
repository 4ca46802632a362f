"""Prompt rendering with the model's own chat template (read from the real GGUF)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from parley.conversation import (
    Conversation,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    Turn,
)
from parley.engines.llamacpp import embedded_model_path
from parley.engines.llamacpp.chat_template import ChatTemplate


@pytest.fixture(scope="module")
def smollm_template() -> ChatTemplate:
    vocab = llama_cpp.Llama(str(embedded_model_path()), vocab_only=True, verbose=False)
    source = vocab.metadata["tokenizer.chat_template"]
    return ChatTemplate(source, bos_token="<|im_start|>", eos_token="<|im_end|>")


def turn(role: str, text: str) -> Turn:
    return Turn(role, (TextPart(text),))  # type: ignore[arg-type]


def test_renders_with_the_gguf_template(smollm_template: ChatTemplate) -> None:
    text = smollm_template.render(Conversation(system="Be brief.", turns=(turn("user", "Hi"),)))
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_prefill_is_appended_after_the_generation_prompt(smollm_template: ChatTemplate) -> None:
    conv = Conversation(system=None, turns=(turn("user", "Hi"),), prefill="Hello")
    assert smollm_template.render(conv).endswith("<|im_start|>assistant\nHello")


def test_inline_system_keeps_the_prefix_stable(smollm_template: ChatTemplate) -> None:
    first = Conversation(system="Top.", turns=(turn("user", "Q1"),))
    later = Conversation(
        system="Top.",
        turns=(
            turn("user", "Q1"),
            turn("assistant", "A1"),
            turn("system", "New rule."),
            turn("user", "Q2"),
        ),
    )
    rendered_first = smollm_template.render(first)
    rendered_later = smollm_template.render(later)
    # Turn 2's prompt extends turn 1's: the KV prefix of the earlier turns is reusable.
    assert rendered_later.startswith(rendered_first)
    assert "<|im_start|>system\nNew rule.<|im_end|>\n<|im_start|>user\nQ2" in rendered_later


def test_strict_templates_get_inline_system_folded_into_the_next_user_turn() -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
        "{{ raise_exception('system only first') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    template = ChatTemplate(strict, bos_token="", eos_token="")
    conv = Conversation(
        system="Top.", turns=(turn("user", "Q1"), turn("system", "Rule."), turn("user", "Q2"))
    )
    rendered = template.render(conv)
    assert rendered == "[system]Top.[user]Q1\n\n<system>Rule.</system>\n\nQ2[assistant]"


def test_claude_code_billing_line_is_normalised() -> None:
    from parley.conversation import normalize_billing_line

    first = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch=1a2b3;\nYou are Claude Code."
    second = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch=9z8y7;\nYou are Claude Code."
    assert normalize_billing_line(first) == normalize_billing_line(second)
    assert normalize_billing_line(first) == (
        "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli;\nYou are Claude Code."
    )
    assert normalize_billing_line("cch=1 in ordinary text") == "cch=1 in ordinary text"


REASONING = (Path(__file__).parent / "data" / "reasoning.jinja").read_text()


def test_reasoning_templates_are_told_whether_to_think() -> None:
    template = ChatTemplate(REASONING, bos_token="", eos_token="<|im_end|>")
    assert template.reasoning
    plain = Conversation(system=None, turns=(turn("user", "Hi"),))
    # Thinking off: the template writes its own empty reasoning section.
    assert template.render(plain).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = Conversation(system=None, turns=(turn("user", "Hi"),), thinking_budget=1024)
    # Thinking on: the section is open when generation starts, opened once.
    assert template.render(thinking).endswith("<|im_start|>assistant\n<think>\n")
    assert template.render(thinking).count("<think>") == 1


def test_reasoning_templates_get_the_tool_loops_thinking_as_reasoning_content() -> None:
    template = ChatTemplate(REASONING, bos_token="", eos_token="<|im_end|>")
    call = ToolCallPart("toolu_1", "lookup", {"q": "x"})
    turns = (
        turn("user", "Look it up."),
        Turn("assistant", (ThinkingPart("I should look it up."), TextPart("Looking."), call)),
        Turn("user", (ToolResultPart("toolu_1", "found"),)),
    )
    conv = Conversation(system=None, turns=turns, thinking_budget=1024)
    text = template.render(conv)
    assert "<think>\nI should look it up.\n</think>\n\nLooking." in text
    # An earlier turn's thinking is dropped, as for every template.
    later = (*turns, turn("assistant", "Done."), turn("user", "Thanks."))
    assert "I should look it up." not in template.render(Conversation(system=None, turns=later))

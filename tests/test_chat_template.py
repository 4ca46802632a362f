"""Prompt rendering with the model's own chat template (read from the real GGUF)."""

from __future__ import annotations

import llama_cpp
import pytest

from parley.conversation import Conversation, TextPart, Turn
from parley.engines.chat_template import ChatTemplate
from parley.engines.llamacpp import embedded_model_path


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

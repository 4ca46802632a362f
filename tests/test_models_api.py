"""``/v1/models``: Anthropic-shaped ModelInfo, aliases, pagination both ways."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import pytest

from parley.config import CLAUDE_MODEL_IDS
from tests.conftest import Server


def test_list_shape_and_aliases(scripted_client: anthropic.Anthropic) -> None:
    page = scripted_client.models.list(limit=1000)
    ids = [m.id for m in page.data]
    assert ids[0] == "scripted"
    assert set(CLAUDE_MODEL_IDS) <= set(ids)
    first = page.data[0]
    assert first.type == "model"
    assert first.display_name
    assert first.created_at.year >= 2020
    assert first.max_input_tokens and first.max_tokens


def test_retrieve_model_and_alias(scripted_client: anthropic.Anthropic) -> None:
    model = scripted_client.models.retrieve("scripted")
    assert model.id == "scripted"
    alias = scripted_client.models.retrieve("claude-sonnet-4-5")
    assert alias.id == "claude-sonnet-4-5"
    assert "scripted" in alias.display_name
    with pytest.raises(anthropic.NotFoundError):
        scripted_client.models.retrieve("gpt-4o")


def test_models_validate_strictly_with_lifecycle_and_capabilities(
    scripted_server: Server,
) -> None:
    """The SDK's strict validation accepts list and retrieve (``lifecycle`` is required),
    and the capabilities say what parley honours for the scripted engine."""
    client = scripted_server.client(_strict_response_validation=True)
    listed = client.models.list(limit=1000).data
    assert all(m.lifecycle == "active" and m.capabilities is not None for m in listed)
    for model_id in ("scripted", "claude-sonnet-4-5"):
        model = client.models.retrieve(model_id)
        assert model.lifecycle == "active"
        assert model.deprecated_at is None and model.retires_at is None
        caps = model.capabilities
        assert caps is not None
        assert caps.batch.supported and caps.thinking.supported
        assert caps.thinking.types.enabled.supported and caps.thinking.types.adaptive.supported
        assert not caps.image_input.supported  # the scripted card takes no images
        assert caps.effort.supported and caps.effort.max.supported
        assert not caps.structured_outputs.supported and not caps.server_tools.supported
        assert not caps.pdf_input.supported and not caps.citations.supported
        edits = caps.context_management
        assert edits.supported and edits.clear_tool_uses_20250919 and edits.clear_thinking_20251015
        assert edits.clear_tool_uses_20250919.supported and edits.clear_thinking_20251015.supported
        # Compaction is a generation of the served model: every engine has it.
        assert edits.compact_20260112 is not None and edits.compact_20260112.supported


def test_alias_answers_messages(scripted_client: anthropic.Anthropic) -> None:
    message = scripted_client.messages.create(
        model="claude-opus-4-6", max_tokens=10, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.model == "claude-opus-4-6"


def test_pagination_forward_and_back(scripted_server: Server) -> None:
    client = scripted_server.client()
    everything = [m.id for m in client.models.list(limit=1000).data]
    # The SDK's auto-pagination walks after_id cursors.
    walked = [m.id for m in client.models.list(limit=3)]
    assert walked == everything
    first = client.models.list(limit=3)
    assert first.has_more and first.first_id == everything[0] and first.last_id == everything[2]
    second = client.models.list(limit=3, after_id=first.last_id)
    assert [m.id for m in second.data] == everything[3:6]
    back = client.models.list(limit=3, before_id=second.first_id)
    assert [m.id for m in back.data] == everything[0:3]
    assert back.has_more is False
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_id": "nope"}):
        response = httpx.get(scripted_server.url + "/v1/models", params=bad)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_configured_aliases(server_factory: Callable[..., Server]) -> None:
    server = server_factory(
        "--engine", "scripted", "--alias", "my-model=scripted", "--no-claude-aliases"
    )
    ids = [m.id for m in server.client().models.list()]
    assert ids == ["scripted", "my-model"]
    with pytest.raises(anthropic.NotFoundError):
        server.client().messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )

"""Every request field of the installed SDK is either modelled by parley or refused by name.

The SDK's request params are TypedDicts; parley's request models are pydantic.
The walk below follows both in parallel from ``MessageCreateParams`` (and its
beta twin) down through unions, picking parley's union member with parley's own
discriminator, so a new SDK field (which parley would answer with "Extra inputs
are not permitted") fails here instead of in a client. A parley model that takes
any shape (``Any``, ``dict``, ``extra="allow"``) or refuses its whole type
(``KnownUnsupported``) ends the walk there.
"""

from __future__ import annotations

import json
import typing
from typing import Any, get_args, get_origin

import pytest
import typing_extensions as te
from anthropic.types import message_count_tokens_params as sdk_count_params
from anthropic.types import message_create_params as sdk_params
from anthropic.types.beta import message_count_tokens_params as sdk_beta_count_params
from anthropic.types.beta import message_create_params as sdk_beta_params
from pydantic import BaseModel, Discriminator, Tag

from parley.conversation import Capabilities, build_conversation
from parley.errors import InvalidRequestError
from parley.wire import requests as wr
from parley.wire.common import KnownUnsupported
from parley.wire.parse import parse

# Sent by the SDK as headers or query parameters, not in the body.
NOT_IN_BODY = {"betas"}
WRAPPERS = (te.Required, te.NotRequired, typing.Required, typing.NotRequired)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) in WRAPPERS:
        annotation = get_args(annotation)[0]
    return annotation


def _literal(cls: Any, field: str) -> str | None:
    """The first literal value of a TypedDict's field (``type`` or ``role``)."""
    annotation = typing.get_type_hints(cls).get(field)
    annotation = _unwrap(annotation) if annotation is not None else None
    if get_origin(annotation) in (te.Literal, typing.Literal):
        value = get_args(annotation)[0]
        return value if isinstance(value, str) else None
    return None


def _sdk_dicts(annotation: Any) -> list[Any]:
    """TypedDicts reachable in an SDK annotation (through unions, iterables, Required)."""
    if te.is_typeddict(annotation):
        return [annotation]
    return [d for arg in get_args(annotation) for d in _sdk_dicts(arg)]


def _open(model: type[BaseModel]) -> bool:
    """A model that accepts whatever it is given, or refuses its whole type."""
    return issubclass(model, KnownUnsupported) or model.model_config.get("extra") == "allow"


class _Choice:
    """Where a parley annotation leads: its models, and how a value picks one."""

    def __init__(self, annotation: Any) -> None:
        self.opaque = False
        self.models: list[type[BaseModel]] = []
        self.tagged: dict[str, type[BaseModel]] = {}
        self.discriminator: Any = None
        self._collect(annotation)

    def _collect(self, annotation: Any, tag: str | None = None) -> None:
        if annotation is Any or get_origin(annotation) is dict or annotation is dict:
            self.opaque = True
            return
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self.models.append(annotation)
            if tag is not None:
                self.tagged[tag] = annotation
            return
        if get_origin(annotation) in (te.Annotated, typing.Annotated):
            inner, *metadata = get_args(annotation)
            for meta in metadata:
                if isinstance(meta, Tag):
                    tag = meta.tag
                elif isinstance(meta, Discriminator) and callable(meta.discriminator):
                    self.discriminator = meta.discriminator
            self._collect(inner, tag)
            return
        for arg in get_args(annotation):
            self._collect(arg)

    def pick(self, sdk: Any) -> type[BaseModel] | None:
        sample = {k: v for k in ("type", "role") if (v := _literal(sdk, k)) is not None}
        if self.discriminator is not None and (
            picked := self.tagged.get(self.discriminator(sample))
        ):
            return picked
        # A shape discriminator (str or list) tags no model: match on the type.
        kind = sample.get("type")
        for model in self.models:
            field = model.model_fields.get("type")
            if field is None or kind is None or kind in get_args(field.annotation):
                return model
        return None


def _missing(sdk: Any, model: type[BaseModel], path: str, seen: set[Any]) -> list[str]:
    if (sdk, model) in seen or _open(model):
        return []
    seen.add((sdk, model))
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    found: list[str] = []
    for name, annotation in typing.get_type_hints(sdk).items():
        if name in NOT_IN_BODY and path == "":
            continue
        where = f"{path}.{name}".lstrip(".")
        if name not in fields:
            found.append(f"{where} (in {sdk.__name__})")
            continue
        choice = _Choice(fields[name].annotation)
        if choice.opaque:
            continue
        for inner in _sdk_dicts(_unwrap(annotation)):
            picked = choice.pick(inner)
            if picked is None:
                found.append(f"{where}: {inner.__name__} (type {_literal(inner, 'type')!r})")
            else:
                found += _missing(inner, picked, where, seen)
    return found


@pytest.mark.parametrize(
    ("params", "model"),
    [
        (sdk_params.MessageCreateParamsNonStreaming, wr.CreateMessageRequest),
        (sdk_beta_params.MessageCreateParamsNonStreaming, wr.CreateMessageRequest),
        (sdk_count_params.MessageCountTokensParams, wr.CountTokensRequest),
        (sdk_beta_count_params.MessageCountTokensParams, wr.CountTokensRequest),
    ],
    ids=["messages", "beta.messages", "count_tokens", "beta.count_tokens"],
)
def test_every_sdk_request_field_is_modelled_or_refused(
    params: Any, model: type[BaseModel]
) -> None:
    missing = sorted(set(_missing(params, model, "", set())))
    assert not missing, "SDK request fields parley neither models nor refuses:\n" + "\n".join(
        missing
    )


USER = {"role": "user", "content": "q"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"thinking": {"type": "adaptive", "block_binding": {"type": "x"}}},
            "thinking.block_binding",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1024, "block_binding": {}}},
            "thinking.block_binding",
        ),
        (
            {"output_config": {"task_budget": {"type": "tokens", "total": 5}}},
            "output_config.task_budget",
        ),
        ({"thinking": {"type": "between_tools"}}, "between_tools"),
        ({"tools": [{"type": "advisor_20260301", "name": "advisor"}]}, "advisor_20260301"),
        (
            {
                "messages": [
                    {"role": "system", "content": "s", "clear_at": {"type": "x"}},
                    USER,
                ]
            },
            "messages.0.clear_at",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "tool_addition"}]}, USER]},
            "tool_addition",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "fallback"}]}]}, "fallback"),
        (
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [{"type": "browser_state"}],
                            }
                        ],
                    },
                ],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            },
            "browser_state",
        ),
    ],
)
def test_refused_fields_are_named(extra: dict[str, Any], named: str) -> None:
    body = {"model": "m", "max_tokens": 2048, "messages": [USER], **extra}
    with pytest.raises(InvalidRequestError) as caught:
        request = parse(wr.CreateMessageRequest, json.dumps(body).encode())
        build_conversation(request, Capabilities(tools=True), model="m")
    assert named in caught.value.message
    assert "not supported" in caught.value.message
    assert "Extra inputs" not in caught.value.message


def test_null_refused_fields_are_accepted() -> None:
    body = {
        "model": "m",
        "max_tokens": 2048,
        "messages": [{"role": "system", "content": "s", "clear_at": None}, USER],
        "thinking": {"type": "adaptive", "block_binding": None},
        "output_config": {"task_budget": None},
    }
    request = parse(wr.CreateMessageRequest, json.dumps(body).encode())
    build_conversation(request, Capabilities(tools=True), model="m")

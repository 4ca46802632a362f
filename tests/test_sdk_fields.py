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

import collections.abc
import json
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, get_args, get_origin

import pytest
import typing_extensions as te
from anthropic.types import message_count_tokens_params as sdk_count_params
from anthropic.types import message_create_params as sdk_params
from anthropic.types.beta import message_count_tokens_params as sdk_beta_count_params
from anthropic.types.beta import message_create_params as sdk_beta_params
from anthropic.types.beta.messages import batch_create_params as sdk_beta_batch_params
from anthropic.types.messages import batch_create_params as sdk_batch_params
from pydantic import BaseModel, Discriminator, Tag

from parley.api.batches import envelope
from parley.conversation import Capabilities, build_conversation
from parley.errors import InvalidRequestError
from parley.thinking import Signer
from parley.wire import requests as wr
from parley.wire.common import KnownUnsupported
from parley.wire.parse import parse
from tests.conftest import InProcess

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
                    {"role": "system", "content": "s", "clear_at": "next_user_message"},
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


# --- the batch envelope ------------------------------------------------------

# BatchCreateParams fields the SDK sends as headers (``anthropic-beta``,
# ``anthropic-user-profile-id``, ``anthropic-workspace-id``), not in the body.
BATCH_HEADERS = {"betas", "user_profile_id", "workspace_id"}


@pytest.mark.parametrize(
    ("batch", "create"),
    [
        (sdk_batch_params, sdk_params.MessageCreateParamsNonStreaming),
        (sdk_beta_batch_params, sdk_beta_params.MessageCreateParamsNonStreaming),
    ],
    ids=["batches", "beta.batches"],
)
def test_batch_params_reach_the_create_model(batch: Any, create: Any) -> None:
    """Each request's ``params`` is the create body, checked by the create model
    (``parley.api.batches.envelope`` stores it; the worker parses it as create)."""
    body = set(typing.get_type_hints(batch.BatchCreateParams)) - BATCH_HEADERS
    assert body == {"requests"}
    request = typing.get_type_hints(batch.Request)
    assert set(request) == {"custom_id", "params"}
    assert _unwrap(request["params"]) is create
    missing = sorted(set(_missing(create, wr.CreateMessageRequest, "params", set())))
    assert not missing, "\n".join(missing)
    requests_type = _unwrap(typing.get_type_hints(batch.BatchCreateParams)["requests"])
    assert _sdk_dicts(requests_type) == [batch.Request]


# --- sending every field -----------------------------------------------------
#
# Each SDK field, with a valid value of each shape its type allows (each union
# member, each literal), is sent on a minimal request and must be accepted, or
# refused by name with "not supported"; never "Extra inputs are not permitted",
# an unknown-type error, or an exception that is not a 400.

SIGNER = Signer(b"k" * 32)
OVERRIDES: dict[str, Any] = {"budget_tokens": 1024, "max_tokens": 2048}


class _Everything(set[Any]):
    """An ``explored`` set that holds every type: each then gives its minimal value."""

    def __contains__(self, item: object) -> bool:
        return True

    def add(self, item: Any) -> None:
        pass


EVERYTHING = _Everything()


@dataclass(frozen=True)
class Variant:
    value: Any
    where: str = ""  # the path of the field this variant sets
    names: tuple[str, ...] = ()  # what a refusal of it must name (field or type)


def _variants(
    annotation: Any, where: str, explored: set[Any], stack: tuple[Any, ...]
) -> list[Variant]:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if te.is_typeddict(annotation):
        return _dict_variants(annotation, where, explored, stack)
    if origin in (te.Literal, typing.Literal):
        return [Variant(v, names=(str(v),)) for v in get_args(annotation)]
    if origin in (te.Annotated, typing.Annotated):
        return _variants(get_args(annotation)[0], where, explored, stack)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [
            v
            for arg in get_args(annotation)
            if arg is not type(None)
            for v in _variants(arg, where, explored, stack)
        ]
    if origin is dict or annotation is dict:
        # A tool's schema must be an object's, for the SDK's tools as for the API.
        return [Variant({"type": "object"} if where.endswith("input_schema") else {})]
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or (
        origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr"
    ):
        (item,) = get_args(annotation) or (str,)
        return [
            Variant([v.value], v.where, v.names) for v in _variants(item, where, explored, stack)
        ]
    if getattr(annotation, "__name__", "") == "SequenceNotStr":
        return [Variant(["x"])]
    if origin is typing.IO or annotation is os.PathLike or origin is os.PathLike:
        return []  # the SDK's file inputs, which it encodes as base64 strings
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return []  # response blocks echoed back: the SDK sends them as their params
    if annotation is bool:
        return [Variant(True)]
    if annotation is int:
        return [Variant(OVERRIDES.get(where.rsplit(".", 1)[-1], 1))]
    if annotation is float:
        return [Variant(0.5)]
    if annotation is str or annotation is object:
        return [Variant("x")]
    raise AssertionError(f"{where}: no sample for {annotation!r}")


def _dict_variants(
    sdk: Any, where: str, explored: set[Any], stack: tuple[Any, ...]
) -> list[Variant]:
    hints = typing.get_type_hints(sdk, include_extras=True)
    # ``__required_keys__`` misses ``Required[...]`` under postponed annotations.
    required = {
        name
        for name, a in hints.items()
        if get_origin(a) in (te.Required, typing.Required)
        or (sdk.__total__ and get_origin(a) not in (te.NotRequired, typing.NotRequired))
    }
    minimal = {
        name: _variants(hints[name], f"{where}.{name}", EVERYTHING, (*stack, sdk))[0].value
        for name in hints
        if name in required
    }
    if sdk in explored or sdk in stack:
        return [Variant(minimal)]
    explored.add(sdk)
    kind = _literal(sdk, "type")
    out = [Variant(minimal, where, (kind,) if kind else ())]
    for name, annotation in hints.items():
        path = f"{where}.{name}".lstrip(".")
        for v in _variants(annotation, path, explored, (*stack, sdk)):
            # A refusal may name the field or any type around it.
            names = (*v.names, name, *((kind,) if kind else ()))
            out.append(Variant({**minimal, name: v.value}, v.where or path, names))
    return out


def _signed(value: Any) -> Any:
    """Thinking blocks signed, redacted thinking sealed, as parley gave them out."""
    if isinstance(value, list):
        return [_signed(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: _signed(v) for k, v in value.items()}
    if value.get("type") == "thinking":
        value["signature"] = SIGNER.sign(value["thinking"])
    if value.get("type") == "redacted_thinking":
        value["data"] = SIGNER.seal("x")
    if value.get("type") == "compaction" and isinstance(value.get("content"), str):
        value["signature"] = SIGNER.sign_compaction(value["content"])
    return value


def _conversation(message: dict[str, Any]) -> list[Any]:
    """``message`` where it is valid: tool results after their calls, calls answered."""
    content = message.get("content")  # a beta system message may carry none
    blocks = content if isinstance(content, list) else []
    if message["role"] == "system":
        if "output_config" not in message:
            message = {"content": "s", **message}  # one of the two is required
        return [message, USER]
    if message["role"] == "user" and any(b.get("type") == "compaction" for b in blocks):
        message = {**message, "role": "assistant"}  # where parley gave the block out
    if message["role"] == "user":
        ids = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        calls = [{"type": "tool_use", "id": i, "name": "x", "input": {}} for i in ids]
        return [USER, {"role": "assistant", "content": calls}, message] if ids else [message]
    ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": i} for i in ids]
    return [USER, message, {"role": "user", "content": results or "ok"}]


X_TOOL = {"name": "x", "input_schema": {"type": "object"}}


def _body(field: str, value: Any, base: dict[str, Any]) -> dict[str, Any]:
    body = {**base, "tools": [X_TOOL]}
    if field == "messages":
        body["messages"] = _conversation(value[0])
    elif field != "":
        body[field] = value
    edits = (body.get("context_management") or {}).get("edits") or []
    if any(isinstance(e, dict) and e.get("type") == "clear_thinking_20251015" for e in edits):
        # The API's rule: clearing thinking needs thinking on.
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        if "max_tokens" in body:
            body["max_tokens"] = max(int(body["max_tokens"]), 2048)
    toolsets = [t for t in body["tools"] if isinstance(t, dict) and t.get("type") == "mcp_toolset"]
    if toolsets and "max_tokens" not in body:  # count_tokens takes them; create refuses
        body.setdefault("mcp_servers", [{"type": "url", "name": "x", "url": "x"}])
    return _signed(body)


def _sent(params: Any, headers: set[str] = NOT_IN_BODY) -> list[tuple[str, Variant]]:
    """Each top-level field of ``params`` with each of its variants."""
    hints = typing.get_type_hints(params, include_extras=True)
    explored: set[Any] = set()
    out: list[tuple[str, Variant]] = []
    for name, annotation in hints.items():
        if name in headers or name in ("model", "stream"):
            continue
        for v in _variants(annotation, name, explored, (params,)):
            out.append((name, Variant(v.value, v.where or name, (*v.names, name))))
    return out


def _check(
    model: type[wr.CountTokensRequest], body: dict[str, Any], variant: Variant
) -> str | None:
    """None when parley accepts ``body`` or refuses ``variant`` as it should; else why not."""
    try:
        request = parse(model, json.dumps(body).encode())
        build_conversation(
            request,
            Capabilities(tools=True, images=True, structured_outputs=True),
            model="m",
            signer=SIGNER,
        )
    except InvalidRequestError as exc:
        text = exc.message
        named = any(n in text for n in variant.names if n)
        if "not supported" in text and named and "Extra inputs" not in text:
            return None
        return f"{variant.where}: {text}"
    except Exception as exc:  # anything else would be a 500
        return f"{variant.where}: {type(exc).__name__}: {exc}"
    return None


SENT = [
    (sdk_params.MessageCreateParamsNonStreaming, wr.CreateMessageRequest, True),
    (sdk_beta_params.MessageCreateParamsNonStreaming, wr.CreateMessageRequest, True),
    (sdk_count_params.MessageCountTokensParams, wr.CountTokensRequest, False),
    (sdk_beta_count_params.MessageCountTokensParams, wr.CountTokensRequest, False),
]


@pytest.mark.parametrize(
    ("params", "model", "create"),
    SENT,
    ids=["messages", "beta.messages", "count_tokens", "beta.count_tokens"],
)
def test_every_sdk_field_sent_is_accepted_or_refused_by_name(
    params: Any, model: type[wr.CountTokensRequest], create: bool
) -> None:
    base: dict[str, Any] = {"model": "m", "messages": [USER]}
    if create:
        base["max_tokens"] = 2048
    sent = _sent(params)
    assert len(sent) > 200  # the walk reached the nested types
    wrong = [
        why
        for field, variant in sent
        if (why := _check(model, _body(field, variant.value, base), variant)) is not None
    ]
    assert not wrong, f"{len(wrong)} of {len(sent)} fields sent:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "params",
    [sdk_params.MessageCreateParamsNonStreaming, sdk_beta_params.MessageCreateParamsNonStreaming],
    ids=["batches", "beta.batches"],
)
def test_every_sdk_field_sent_in_a_batch_is_checked_as_create(params: Any) -> None:
    """Through the batch envelope, each request's params mean what create's do."""
    base = {"model": "m", "messages": [USER], "max_tokens": 2048}
    wrong = []
    for field, variant in _sent(params, headers=set()):  # here ``betas`` is in the body
        body = _body(field, variant.value, base)
        [(_, stored)] = envelope(
            json.dumps({"requests": [{"custom_id": "a", "params": body}]}).encode()
        )
        if (why := _check(wr.CreateMessageRequest, json.loads(stored), variant)) is not None:
            wrong.append(why)
    assert not wrong, "\n".join(wrong)


# --- accepted without local effect -------------------------------------------

NO_LOCAL_EFFECT: dict[str, Any] = {
    "service_tier": "standard_only",
    "speed": "fast",
    "inference_geo": "us",
    "metadata": {"user_id": "u1"},
    "billing_policy": {"type": "billing_policy", "bill_to": "self"},
    "diagnostics": {"previous_message_id": None},
    "fallbacks": [
        {"model": "claude-x", "max_tokens": 10, "thinking": {"type": "disabled"}, "speed": "fast"}
    ],
    "fallback_credit_token": {"token": "t", "mode": "best_effort"},
}


def test_fields_without_local_effect_change_nothing(in_process: InProcess) -> None:
    client = in_process.client()
    plain = client.beta.messages.create(model="scripted", max_tokens=20, messages=[USER])
    given = client.beta.messages.create(
        model="scripted",
        max_tokens=20,
        messages=[USER],
        user_profile_id="profile",
        workspace_id="wrkspc_1",
        **NO_LOCAL_EFFECT,
    )
    assert given.content == plain.content
    assert given.usage == plain.usage
    assert given.usage.speed == "standard" and given.usage.service_tier == "standard"
    default = client.beta.messages.create(
        model="scripted", max_tokens=20, messages=[USER], fallbacks="default"
    )
    assert default.content == plain.content


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"diagnostics": {"previous_message_id": 5}}, "diagnostics.previous_message_id"),
        ({"fallbacks": "all"}, "fallbacks"),
        ({"fallbacks": [{"model": "m", "temperature": 1}]}, "fallbacks.0.temperature"),
        (
            {"fallback_credit_token": {"token": "t", "mode": "lenient"}},
            "fallback_credit_token.mode",
        ),
        (
            {"billing_policy": {"type": "billing_policy", "bill_to": "you"}},
            "billing_policy.bill_to",
        ),
        ({"speed": "ludicrous"}, "speed"),
    ],
)
def test_fields_without_local_effect_still_have_a_shape(extra: dict[str, Any], path: str) -> None:
    body = {"model": "m", "max_tokens": 20, "messages": [USER], **extra}
    with pytest.raises(InvalidRequestError) as caught:
        parse(wr.CreateMessageRequest, json.dumps(body).encode())
    assert caught.value.message.startswith(path + ":")

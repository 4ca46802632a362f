"""Shared pieces of the wire models: strict bases, tagged unions, cache control."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, model_validator
from pydantic_core import PydanticCustomError

# Union members are tagged "~name" so that validation error locations can drop
# the tags and keep only the path into the client's JSON (see ``error_path``).
TAG_PREFIX = "~"


class RequestModel(BaseModel):
    """Base of every request model: unknown fields are errors, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class ResponseModel(BaseModel):
    """Base of every response model."""

    model_config = ConfigDict(extra="forbid")


def tag(name: str) -> str:
    return TAG_PREFIX + name


def type_discriminator(
    kind: str,
    known: list[str],
    *,
    default: str | None = None,
    grouped: dict[str, str] | None = None,
) -> Discriminator:
    """A discriminator on the ``type`` field whose error lists the accepted types.

    ``default`` is the tag used when ``type`` is absent; ``grouped`` maps several
    type names onto one union member's tag.
    """
    groups = grouped or {}

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            raw = value.get("type", default)
        else:
            raw = getattr(value, "type", None)
        if not isinstance(raw, str):
            return None
        return tag(groups.get(raw, raw))

    expected = ", ".join(f"'{k}'" for k in known)
    return Discriminator(
        pick,
        custom_error_type="invalid_type_tag",
        custom_error_message=f"Input should be a {kind} whose 'type' is one of: {expected}",
    )


def str_or_list(value: Any) -> str:
    return tag("str") if isinstance(value, str) else tag("list")


def shape_discriminator(fn: Callable[[Any], str]) -> Discriminator:
    return Discriminator(fn)


class KnownUnsupported(RequestModel):
    """A type the API defines but parley cannot serve yet: validation always fails,
    with a message naming the type instead of an "unknown type" error."""

    refusal: ClassVar[str] = "'{kind}' is not supported by parley yet"
    type: str

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else value
        raise PydanticCustomError("unsupported", cls.refusal, {"kind": kind})


class CacheControlEphemeral(RequestModel):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


def error_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as the client's path (``messages.0.content``)."""
    parts = [
        str(p) for p in loc if not (isinstance(p, str) and (p.startswith(TAG_PREFIX) or "[" in p))
    ]
    return ".".join(parts)

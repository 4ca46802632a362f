"""A JSON body into a wire model, with the API's error messages.

Used by the HTTP handlers and by the batch worker alike (a batch request's
params are parsed exactly as a ``/v1/messages`` body is).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from parley.errors import InvalidRequestError
from parley.offload import Offload
from parley.wire import json_body
from parley.wire.common import error_path

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; the first problem becomes a 400 naming its path."""
    if not body.strip():
        raise InvalidRequestError("the request body is empty; expected a JSON object")
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            detail = str(first["msg"]).removeprefix("Invalid JSON: ")
            raise InvalidRequestError(f"the request body is not valid JSON: {detail}") from None
        path = error_path(tuple(first["loc"]))
        if first["type"] == "model_type" and not path:
            raise InvalidRequestError("the request body must be a JSON object") from None
        message = f"{path}: {first['msg']}" if path else str(first["msg"])
        raise InvalidRequestError(message) from None
    json_body.refuse_duplicate_keys(body)
    return parsed


async def parse_body(model: type[M], body: bytes, offload: Offload) -> M:
    """``parse``, in a worker thread when the body is big (see ``parley.offload``)."""
    return await offload.run(len(body), lambda: parse(model, body))

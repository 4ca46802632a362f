"""parley's OpenAPI document: request bodies from the wire models, errors documented.

Handlers read raw bodies (for the size limit and exact error paths), so the
request schemas are attached by hand; their ``$defs`` move to
``components/schemas`` so every reference resolves. Every operation lists the
error statuses parley can answer with, in the Anthropic error envelope.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from parley.wire.responses import ErrorEnvelope

REF = "#/components/schemas/{model}"
_DEFS_KEY = "x-parley-defs"  # an operation's schema definitions, moved to components

ERROR_STATUSES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error (method not allowed)",
    408: "timeout_error (the request body did not arrive in time)",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an operation whose JSON body is ``model``."""
    schema = model.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}, _DEFS_KEY: defs}


def error_responses() -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ErrorEnvelope, "description": f"Anthropic error envelope: {kind}"}
        for status, kind in ERROR_STATUSES.items()
    }


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    for name, schema in operation.pop(_DEFS_KEY, {}).items():
                        schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

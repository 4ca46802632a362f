"""The one place errors become HTTP responses: the Anthropic error envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from parley.api.middleware import access_of
from parley.errors import (
    APIError,
    InvalidRequestError,
    NotFoundError,
    ParleyError,
    PromptTooLongError,
    RequestTooLargeError,
)
from parley.wire.responses import ErrorEnvelope, error_detail

log = logging.getLogger("parley.api")


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def render(error: ParleyError, request_id: str | None) -> Response:
    body = ErrorEnvelope(
        error=error_detail(error.error_type, error.message, error.error_code),
        request_id=request_id,
    )
    return Response(
        body.model_dump_json(),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _answer(request: Request, error: ParleyError) -> Response:
    access = access_of(request)  # the access line names the error
    access.error_type, access.error = error.error_type, error.message
    if isinstance(error, PromptTooLongError):
        access.hint = (
            f"the context window is {error.context} tokens: serve a longer one with "
            "--n-ctx (the embedded engine), or the upstream's own context size"
        )
    return render(error, request_id_of(request))


def install(app: FastAPI) -> None:
    async def on_parley_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ParleyError)
        return _answer(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: ParleyError
        if exc.status_code == 404:
            error = NotFoundError(f"Not found: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(
                f"Method {request.method} is not allowed on {request.url.path}"
            )
        elif exc.status_code == 413:
            error = RequestTooLargeError(str(exc.detail))
        elif exc.status_code < 500:
            error = InvalidRequestError(str(exc.detail))
        else:
            error = APIError(str(exc.detail))
        return _answer(request, error)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        path = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        message = f"{path}: {first['msg']}" if path else str(first["msg"])
        return _answer(request, InvalidRequestError(message))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return _answer(request, APIError("Internal server error"))

    app.add_exception_handler(ParleyError, on_parley_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)

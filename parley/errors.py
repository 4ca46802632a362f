"""One error hierarchy for everything parley reports to a client.

Every class fixes its HTTP status and its Anthropic ``error.type``. Code raises
these; one handler (``parley.api.errors``) renders the Anthropic envelope
``{"type": "error", "error": {"type": T, "message": M}, "request_id": R}``
(with ``error.details.error_code`` where the API names the cause: ``error_code``)::

    ParleyError
    ├── InvalidRequestError        400 invalid_request_error
    │   ├── UnsupportedFeatureError    (known to the API, not served here yet)
    │   ├── PromptTooLongError         (the prompt does not fit the context window)
    │   └── CompactionError            (a compaction block or request the API refuses)
    ├── AuthenticationError        401 authentication_error
    ├── PermissionDeniedError      403 permission_error
    ├── NotFoundError              404 not_found_error
    ├── RequestTimeoutError        408 timeout_error (the body did not arrive in time)
    ├── RequestTooLargeError       413 request_too_large
    ├── RateLimitError             429 rate_limit_error
    ├── APIError                   500 api_error
    │   ├── EngineError                (the inference engine failed)
    │   └── StorageError               (the database failed: down, disk full)
    ├── TimeoutError_              504 timeout_error
    ├── OverloadedError            529 overloaded_error
    └── ModelLoadError             (start-up: a model or an upstream cannot be served)

Foreign exceptions (llama.cpp, jinja, I/O) are translated at the boundary
with ``raise SomeParleyError(...) from exc``.
"""

from __future__ import annotations

from typing import ClassVar


class ParleyError(Exception):
    """Base of every error parley reports; carries status and Anthropic type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    error_code: str | None = None  # the API's ``error.details.error_code``, where it has one

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequestError(ParleyError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedFeatureError(InvalidRequestError):
    """A feature of the Anthropic API that parley, or the served model, cannot do."""


class PromptTooLongError(InvalidRequestError):
    """The prompt has ``tokens`` tokens or more, and the context window holds
    ``context`` (prompt and output together). With ``exact`` false, ``tokens``
    is a proven lower bound: the prompt was refused without tokenizing it whole.

    The message starts as the API's does (``prompt is too long: N tokens > M
    maximum``), which clients parse to decide when to compact a conversation.
    """

    def __init__(self, tokens: int, *, context: int, model: str, exact: bool = True) -> None:
        counted = "" if exact else "a lower bound, counted without tokenizing it whole; "
        super().__init__(
            f"prompt is too long: {tokens} tokens > {context - 1} maximum ({counted}the context "
            f"window of {model} is {context} tokens, prompt and output together)"
        )
        self.tokens = tokens
        self.context = context
        self.exact = exact


class CompactionError(InvalidRequestError):
    """A compaction the API refuses, with its code (``compaction_signature_invalid``,
    ``compaction_block_misplaced``...): the SDK raises its own class for each."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.error_code = code


class AuthenticationError(ParleyError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(ParleyError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(ParleyError):
    status_code = 404
    error_type = "not_found_error"


class RequestTimeoutError(ParleyError):
    status_code = 408
    error_type = "timeout_error"


class RequestTooLargeError(ParleyError):
    status_code = 413
    error_type = "request_too_large"


class RateLimitError(ParleyError):
    status_code = 429
    error_type = "rate_limit_error"


class APIError(ParleyError):
    status_code = 500
    error_type = "api_error"


class EngineError(APIError):
    """The inference engine failed while serving a request."""


class StorageError(APIError):
    """The database could not be used (its server is down, its disk is full)."""


class TimeoutError_(ParleyError):
    status_code = 504
    error_type = "timeout_error"


class OverloadedError(ParleyError):
    status_code = 529
    error_type = "overloaded_error"


class ModelLoadError(ParleyError):
    """Start-up error: a model file is missing or cannot be loaded, or an
    upstream cannot serve (said on the command line, never to a client)."""

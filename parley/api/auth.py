"""API-key authentication: ``x-api-key`` or ``Authorization: Bearer``."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from parley.errors import AuthenticationError


def presented_keys(request: Request) -> list[str]:
    keys = []
    if key := request.headers.get("x-api-key"):
        keys.append(key.strip())
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    return keys


def _matches(key: str, allowed: str) -> bool:
    """Constant-time comparison; a configured ``sha256:HEX`` matches the key it hashes."""
    if allowed.startswith("sha256:"):
        digest = hashlib.sha256(key.encode()).hexdigest()
        return hmac.compare_digest(digest.encode(), allowed[7:].strip().lower().encode())
    return hmac.compare_digest(key.encode(), allowed.encode())


def check(request: Request, allowed: tuple[str, ...]) -> None:
    """Pass when no keys are configured, or when either header holds an allowed key."""
    if not allowed:
        return
    presented = presented_keys(request)
    if not presented:
        raise AuthenticationError("x-api-key header is required")
    for key in presented:
        # Compare against every allowed key so timing does not reveal which matched.
        if any([_matches(key, a) for a in allowed]):
            return
    raise AuthenticationError("invalid x-api-key")


def matched_key(request: Request, allowed: tuple[str, ...]) -> str | None:
    """The configured key this (already checked) request presented; None on an open server."""
    if not allowed:
        return None
    for key in presented_keys(request):
        if any([_matches(key, a) for a in allowed]):
            return key
    return None

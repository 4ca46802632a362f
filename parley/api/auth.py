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


def check(request: Request, allowed: tuple[str, ...]) -> str | None:
    """The allowed key the request presented (either header), None when no keys are
    configured; 401 otherwise."""
    if not allowed:
        return None
    presented = presented_keys(request)
    if not presented:
        raise AuthenticationError("x-api-key header is required")
    for key in presented:
        # Compare against every allowed key so timing does not reveal which matched.
        if any([_matches(key, a) for a in allowed]):
            return key
    raise AuthenticationError("invalid x-api-key")

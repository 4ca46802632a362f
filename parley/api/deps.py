"""Per-app objects handed to handlers (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from parley.api import auth
from parley.batches.store import owner_of
from parley.catalog import Catalog
from parley.config import Settings
from parley.errors import APIError
from parley.ratelimit import RateLimiter
from parley.service import MessagesService

if TYPE_CHECKING:
    from parley.batches.store import BatchStore
    from parley.batches.worker import BatchWorker


@dataclass
class AppState:
    settings: Settings
    catalog: Catalog
    messages: MessagesService
    batches: BatchStore | None = None
    worker: BatchWorker | None = None
    limiter: RateLimiter = field(default_factory=RateLimiter)  # Messages, batches included
    count_limiter: RateLimiter = field(default_factory=RateLimiter)  # count_tokens

    def batch_store(self) -> BatchStore:
        if self.batches is None:
            raise APIError("message batches are not available on this server")
        return self.batches

    def batch_worker(self) -> BatchWorker:
        if self.worker is None:
            raise APIError("message batches are not available on this server")
        return self.worker


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.parley
    return state


def authenticated(request: Request) -> AppState:
    """Dependency of every ``/v1`` route: the app state, once the key checks out.
    The key's scope (``owner``) is kept on the request for the handlers."""
    state = app_state(request)
    request.state.owner = owner = owner_of(auth.check(request, state.settings.api_keys))
    if state.limiter.enabled:  # the middleware adds this key's rate-limit headers
        request.state.rate_limited = state.limiter.headers_for(owner)
    return state


def key_owner(request: Request) -> str:
    """The scope of the request's API key (set by ``authenticated``)."""
    scope: str = request.state.owner
    return scope

"""Per-app objects handed to handlers (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from parley.api import auth
from parley.catalog import Catalog
from parley.config import Settings
from parley.service import MessagesService


@dataclass
class AppState:
    settings: Settings
    catalog: Catalog
    messages: MessagesService


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.parley
    return state


def authenticated(request: Request) -> AppState:
    """Dependency of every ``/v1`` route: the app state, once the key checks out."""
    state = app_state(request)
    auth.check(request, state.settings.api_keys)
    return state

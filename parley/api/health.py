"""``GET /`` and ``HEAD /`` for health checks, ``GET /parley/stats`` for operators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request

from parley.api.deps import AppState, app_state, authenticated

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"])
async def health(request: Request) -> dict[str, Any]:
    state = app_state(request)
    return {"status": "ok", "models": state.catalog.ids()[:1]}


@router.get("/parley/stats")
async def stats(state: Annotated[AppState, Depends(authenticated)]) -> dict[str, Any]:
    return {engine.card.id: engine.stats() for engine in state.catalog.engines}

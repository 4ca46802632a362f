"""``GET /`` and ``/health`` for health checks, ``GET /parley/stats`` for operators.

Both health routes answer 503 when an engine cannot serve any more (its
decode loop gave up), so a load balancer or supervisor takes the process out
or restarts it instead of sending it requests that would hang.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse

from parley.api.deps import AppState, app_state, authenticated

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    broken = {e.card.id: reason for e in state.catalog.engines if (reason := e.broken)}
    if broken:
        return JSONResponse({"status": "unhealthy", "engines": broken}, status_code=503)
    return JSONResponse({"status": "ok", "models": state.catalog.ids()[:1]})


@router.get("/parley/stats")
async def stats(state: Annotated[AppState, Depends(authenticated)]) -> dict[str, Any]:
    return {engine.card.id: engine.stats() for engine in state.catalog.engines}

"""``GET /v1/models`` and ``GET /v1/models/{model_id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from parley.api import openapi
from parley.api.deps import AppState, authenticated
from parley.api.http import json_response
from parley.wire.responses import ModelInfo, ModelPage

router = APIRouter(responses=openapi.error_responses())


@router.get("/v1/models", response_model=ModelPage)
async def list_models(
    state: Annotated[AppState, Depends(authenticated)],
    limit: Annotated[int, Query()] = 20,
    before_id: Annotated[str | None, Query()] = None,
    after_id: Annotated[str | None, Query()] = None,
) -> Response:
    page = state.catalog.page(limit=limit, before_id=before_id, after_id=after_id)
    return json_response(page)


@router.get("/v1/models/{model_id:path}", response_model=ModelInfo)
async def get_model(model_id: str, state: Annotated[AppState, Depends(authenticated)]) -> Response:
    return json_response(state.catalog.info(model_id))

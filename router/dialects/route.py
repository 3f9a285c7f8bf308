"""The router's own endpoints: POST /v1/route (the decision, no generation) and GET /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from models.errors import InvalidRequest
from router.dialects.body import openapi_body, read_json, validate
from router.dialects.dispatch import route_request, state
from router.streaming import route_headers

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/infill", "/completion", "/api/generate", "/api/chat")


class RouteRequest(BaseModel):
    """Either {"endpoint", "body"} or a bare request body (chat if it has `messages`, else completions)."""

    model_config = ConfigDict(extra="allow")

    endpoint: str | None = Field(None, description=f"One of {', '.join(ENDPOINTS)}.")
    body: dict[str, Any] | None = Field(None, description="The request body as it would be sent to `endpoint`.")
    model: str | None = Field(None, description="Overrides body.model: `auto`, a label or a model id.")


def unwrap(data: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    req = validate(RouteRequest, data)
    if req.body is not None or req.endpoint is not None:
        endpoint = req.endpoint or "/v1/chat/completions"
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"`endpoint` must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
        body = req.body or {}
        return endpoint, body, req.model if req.model is not None else body.get("model")
    endpoint = "/v1/chat/completions" if "messages" in data else "/v1/completions"
    return endpoint, data, data.get("model")


def build() -> APIRouter:
    api = APIRouter(tags=["router"])

    @api.post("/v1/route", openapi_extra=openapi_body(RouteRequest))
    async def route(request: Request):
        data = await read_json(request)
        endpoint, body, model = unwrap(data)
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("`model` must be a string.", param="model")
        decision = route_request(request, endpoint, body, model)
        state(request).metrics.requests.labels("router", "/v1/route", decision.label, decision.model_id, "200").inc()
        out = decision.as_dict()
        out["endpoint"] = endpoint
        return JSONResponse(out, headers=route_headers(decision))

    @api.get("/metrics")
    async def metrics(request: Request):
        return Response(state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api

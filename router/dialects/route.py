"""The router's own endpoints: POST /v1/route (the decision, no generation) and GET /metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from models.request import Request as InternalRequest
from router.dialects.body import openapi_body, read_json, validate
from router.dialects.dispatch import route_request
from router.dialects.endpoints import ENDPOINTS, parse_request
from router.state import state


class RouteRequest(BaseModel):
    """Either {"endpoint", "body"} or a bare request body (chat if it has `messages`, else completions)."""

    model_config = ConfigDict(extra="allow")

    endpoint: str | None = Field(None, description=f"One of {', '.join(ENDPOINTS)}.")
    body: dict[str, Any] | None = Field(None, description="The request body as it would be sent to `endpoint`.")
    model: str | None = Field(None, description="Overrides body.model: `auto`, a label or a model id.")


def unwrap(data: dict[str, Any]) -> InternalRequest:
    """The request /v1/route is asked about, parsed by the adapter of the endpoint it names."""
    req = validate(RouteRequest, data)
    if req.body is not None or req.endpoint is not None:
        internal = parse_request(req.endpoint or "/v1/chat/completions", req.body or {})
        return internal if req.model is None else dataclasses.replace(internal, model=req.model)
    return parse_request("/v1/chat/completions" if "messages" in data else "/v1/completions", data)


def build() -> APIRouter:
    api = APIRouter(tags=["router"])

    @api.post("/v1/route", openapi_extra=openapi_body(RouteRequest))
    async def route(request: Request):
        internal = unwrap(await read_json(request))
        decision = route_request(request, internal)
        state(request).metrics.requests.labels("router", "/v1/route", decision.label, decision.model_id, "200").inc()
        out = decision.as_dict()
        out["endpoint"] = internal.endpoint
        return JSONResponse(out, headers=decision.headers())

    @api.get("/metrics")
    async def metrics(request: Request):
        return Response(state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api

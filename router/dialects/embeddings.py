"""Embeddings, OpenAI's and Ollama's: POST /v1/embeddings, /api/embed and Ollama's legacy /api/embeddings.

Catalog models marked `embedding: true` answer them through the pool, as generations are answered
(loading, the memory budget, queueing, cancellation, unloading). `model` names one; `auto` or none
is the first. OpenAI and Ollama's /api/embed return unit (L2-normalised) vectors, as both servers do;
the legacy /api/embeddings returns them as pooled, as Ollama does. An input longer than the model's
context is a 400 on /v1/embeddings; Ollama cuts it unless `truncate: false`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.errors import Cancelled, InvalidRequest, UnsupportedParameter
from models.events import Finish
from models.request import Request, SamplingParams
from router.dialects.body import openapi_body, parse
from router.dialects.ollama import OllamaOptions, keep_alive_hook, parse_keep_alive
from router.errors import OLLAMA, OPENAI
from router.routing import Route
from router.state import state
from router.streaming import collect, start_generation


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's body: unknown arguments are refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="A text, several, or token ids (one list, or one list per input)."
    )
    model: str | None = Field(None, description="An embedding model's id; `auto` or none: the first.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Only the model's own vector size.")
    user: str | None = None

    def to_request(self) -> Request:
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            value = [value]  # type: ignore[list-item]
        if not value:
            raise InvalidRequest("`input` must hold at least one text.", param="input")
        inputs = tuple(item if isinstance(item, str) else tuple(item) for item in value)
        return Request("embed", "/v1/embeddings", self.model, inputs=inputs)


class OllamaEmbedBase(BaseModel):
    """Fields /api/embed and /api/embeddings share; unknown keys are ignored, as Ollama does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="An embedding model's id (`:latest` optional); none: the first.")
    options: OllamaOptions | None = None
    keep_alive: str | float | int | None = Field(None, description="Duration or seconds; 0 unloads after answering.")

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: Any) -> Any:
        parse_keep_alive(v)
        return v

    def request(self, endpoint: str, inputs: tuple[str, ...], truncate: bool) -> Request:
        params = self.options.params() if self.options else SamplingParams()
        return Request("embed", endpoint, self.model, params, inputs=inputs, truncate=truncate)


class OllamaEmbedRequest(OllamaEmbedBase):
    input: str | list[str] = Field("", description="A text or several; empty: load the model.")
    truncate: bool = Field(True, description="Cut inputs to the context (false: refuse them).")
    dimensions: int | None = Field(None, ge=1, description="Only the model's own vector size.")

    def to_request(self) -> Request:
        inputs = ((self.input,) if self.input else ()) if isinstance(self.input, str) else tuple(self.input)
        return self.request("/api/embed", inputs, self.truncate)


class OllamaEmbeddingsRequest(OllamaEmbedBase):
    """The legacy body: one `prompt`, cut to the context as /api/embed does by default."""

    prompt: str = Field("", description="The text; empty: load the model.")

    def to_request(self) -> Request:
        return self.request("/api/embeddings", (self.prompt,) if self.prompt else (), truncate=True)


async def embed(request: HTTPRequest, internal: Request, dialect: str) -> tuple[Route, list[list[float]], Finish]:
    """Route to the embedding model, run the request through the pool, return its vectors."""
    app_state = state(request)
    route = app_state.router.embedding_route(internal.model)
    request.state.endpoint, request.state.route = internal.endpoint, route  # for error headers and metrics
    recorder = app_state.metrics.recorder(dialect, internal.endpoint, route.label, route.model_id)
    active = await start_generation(app_state.pool.submit(route.model_id, internal), request)
    outcome = await collect(active)
    finish = outcome.finish
    if finish.reason == "cancelled":
        raise Cancelled("The request was cancelled.")
    recorder.finish(finish, 200)
    return route, outcome.vectors, finish


def unit(vector: list[float]) -> np.ndarray:
    """The vector scaled to length 1 (a zero vector stays zero)."""
    arr = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr


def check_dimensions(asked: int | None, vectors: list[list[float]]) -> None:
    """`dimensions` is honoured only as the model's own size: shortening a vector suits few models."""
    if asked is not None and vectors and asked != len(vectors[0]):
        raise UnsupportedParameter(f"`dimensions` {asked} is not supported: this model's vectors have "
                                   f"{len(vectors[0])} dimensions (send that, or leave it out).", param="dimensions")


async def load_or_unload(request: HTTPRequest, model_id: str, keep: float | None) -> None:
    """Ollama's empty embedding request: load the model, or unload it with keep_alive 0."""
    pool = state(request).pool
    loop = asyncio.get_running_loop()
    if keep == 0:
        await loop.run_in_executor(None, pool.unload, model_id)
    else:
        await loop.run_in_executor(None, lambda: pool.preload(model_id, pin=keep is not None and keep < 0))


async def openai_embeddings(request: HTTPRequest) -> JSONResponse:
    req, internal = await parse(request, OpenAIEmbeddingRequest)
    route, vectors, finish = await embed(request, internal, OPENAI)
    check_dimensions(req.dimensions, vectors)
    data = []
    for i, vector in enumerate(vectors):
        arr = unit(vector)
        encoded: Any = base64.b64encode(arr.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" \
            else arr.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = finish.usage.prompt_tokens
    body = {"object": "list", "data": data, "model": route.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return JSONResponse(body, headers=route.headers())


async def ollama_embed(request: HTTPRequest) -> JSONResponse:
    started = time.perf_counter()
    req, internal = await parse(request, OllamaEmbedRequest)
    keep = parse_keep_alive(req.keep_alive)
    if not internal.inputs:
        route = state(request).router.embedding_route(req.model)
        await load_or_unload(request, route.model_id, keep)
        return JSONResponse({"model": req.model or route.model_id, "embeddings": []}, headers=route.headers())
    route, vectors, finish = await embed(request, internal, OLLAMA)
    check_dimensions(req.dimensions, vectors)
    after = keep_alive_hook(request, route, keep)
    if after is not None:
        after()
    body = {
        "model": req.model or route.model_id,
        "embeddings": [unit(v).tolist() for v in vectors],
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": int(finish.usage.load_ms * 1e6),
        "prompt_eval_count": finish.usage.prompt_tokens,
    }
    return JSONResponse(body, headers=route.headers())


async def ollama_embeddings(request: HTTPRequest) -> JSONResponse:
    req, internal = await parse(request, OllamaEmbeddingsRequest)
    keep = parse_keep_alive(req.keep_alive)
    if not internal.inputs:
        route = state(request).router.embedding_route(req.model)
        await load_or_unload(request, route.model_id, keep)
        return JSONResponse({"embedding": []}, headers=route.headers())
    route, vectors, _ = await embed(request, internal, OLLAMA)
    after = keep_alive_hook(request, route, keep)
    if after is not None:
        after()
    return JSONResponse({"embedding": vectors[0]}, headers=route.headers())


def build() -> APIRouter:
    api = APIRouter(tags=["embeddings"])
    api.add_api_route("/v1/embeddings", openai_embeddings, methods=["POST"],
                      openapi_extra=openapi_body(OpenAIEmbeddingRequest))
    api.add_api_route("/api/embed", ollama_embed, methods=["POST"], openapi_extra=openapi_body(OllamaEmbedRequest))
    api.add_api_route("/api/embeddings", ollama_embeddings, methods=["POST"],
                      openapi_extra=openapi_body(OllamaEmbeddingsRequest))
    return api

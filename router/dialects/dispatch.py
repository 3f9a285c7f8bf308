"""The steps every dialect shares once it has parsed a request: route, submit, supersede, respond.

Adapters only translate their wire format to a GenerationRequest and pick a ChunkFormat; this
module does the rest the same way for all of them.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import Request
from fastapi.responses import Response

from models.backend import GenerationRequest
from models.upstream_backend import UPSTREAM_USER_AGENT
from router.routing import Route
from router.streaming import ChunkFormat, respond


def state(request: Request) -> Any:
    return request.app.state


def route_request(request: Request, endpoint: str, body: dict, requested_model: str | None) -> Route:
    """Classify and pick the model; remembered on request.state for headers, errors and metrics."""
    request.state.endpoint = endpoint
    route = state(request).router.route(endpoint, body, requested_model)
    request.state.route = route
    return route


class Superseder:
    """Newer FIM requests from the same client cancel that client's older one still in flight.

    Editors fire a FIM request per keystroke and only the newest matters. A client is its dialect,
    address, User-Agent and slot id, and the request must be about the same document (the same
    head of the prefix): two editor windows with one User-Agent, or a script sending FIM requests
    in parallel, must never cancel each other's work. Editors that abort (llama.vim kills curl,
    Continue aborts its fetch) are cancelled by their disconnect whatever this decides.
    """

    DOCUMENT_HEAD_CHARS = 256

    def __init__(self) -> None:
        self.inflight: dict[tuple, Any] = {}
        self.superseded = 0

    @staticmethod
    def key(request: Request, dialect: str, fim: GenerationRequest, slot: Any = None) -> tuple | None:
        """Who is asking about which document; None for a router in front of us (it speaks for many editors)."""
        agent = request.headers.get("user-agent", "")
        if agent == UPSTREAM_USER_AGENT:
            return None
        host = request.client.host if request.client else ""
        return (dialect, host, agent, slot, fim.prefix[: Superseder.DOCUMENT_HEAD_CHARS])

    def claim(self, key: tuple, gen: Any) -> None:
        old = self.inflight.get(key)
        if old is not None and old is not gen:
            old.cancel()
            self.superseded += 1
        self.inflight[key] = gen

    def release(self, key: tuple, gen: Any) -> None:
        if self.inflight.get(key) is gen:
            del self.inflight[key]


def submit(request: Request, route: Route, gen_request: GenerationRequest) -> Any:
    """Hand the request to the pool (fast: queueing only); ModelNotFound/Overloaded/FimNotSupported raise."""
    return state(request).pool.submit(route.model_id, gen_request)


async def answer(
    request: Request,
    *,
    dialect: str,
    route: Route,
    gen_request: GenerationRequest,
    fmt: ChunkFormat,
    stream: bool,
    supersede_key: tuple | None = None,
    after: Callable[[], None] | None = None,
) -> Response:
    """Submit and serve one generation in the caller's dialect; `after` runs once it is over."""
    app_state = state(request)
    gen = submit(request, route, gen_request)
    if supersede_key is not None:
        app_state.superseder.claim(supersede_key, gen)

    def on_close() -> None:
        if supersede_key is not None:
            app_state.superseder.release(supersede_key, gen)
        if after is not None:
            after()

    recorder = app_state.metrics.recorder(dialect, request.state.endpoint, route.label, route.model_id)
    return await respond(request, gen, fmt, stream=stream, route=route, recorder=recorder, on_close=on_close)

"""The steps every dialect shares once it has parsed a request: route, submit, supersede, respond.

Adapters only translate their wire format to the internal Request and pick a ChunkFormat; this
module does the rest the same way for all of them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from fastapi import Request
from fastapi.responses import Response

from models.pool import Generation
from models.request import Request as InternalRequest
from router.routing import Route
from router.state import state
from router.streaming import ChunkFormat, respond
from router.superseder import SupersedeKey


def route_request(request: Request, internal: InternalRequest) -> Route:
    """Classify and pick the model; remembered on request.state for headers, errors and metrics."""
    request.state.endpoint = internal.endpoint
    route = state(request).router.route(internal)
    request.state.route = route
    return route


def submit(request: Request, route: Route, internal: InternalRequest) -> Generation:
    """Hand the request to the pool (fast: queueing only); ModelNotFound/Overloaded/FimNotSupported raise."""
    app_state = state(request)
    if internal.params.fim_trim is None:  # the request did not say: the server's setting
        internal = replace(internal, params=replace(internal.params, fim_trim=app_state.settings.fim_trim))
    return app_state.pool.submit(route.model_id, internal)


async def answer(
    request: Request,
    *,
    dialect: str,
    route: Route,
    internal: InternalRequest,
    fmt: ChunkFormat,
    stream: bool,
    supersede_key: SupersedeKey | None = None,
    after: Callable[[], None] | None = None,
) -> Response:
    """Submit and serve one generation in the caller's dialect; `after` runs once it is over."""
    app_state = state(request)
    gen = submit(request, route, internal)
    if supersede_key is not None:
        app_state.superseder.claim(supersede_key, gen)

    def on_close() -> None:
        if supersede_key is not None:
            app_state.superseder.release(supersede_key, gen)
        if after is not None:
            after()

    recorder = app_state.metrics.recorder(dialect, internal.endpoint, route.label, route.model_id)
    return await respond(request, gen, fmt, stream=stream, route=route, recorder=recorder, on_close=on_close)

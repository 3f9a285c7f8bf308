"""The one path from a Generation's events to an HTTP response: SSE, NDJSON or one JSON body.

Handlers of every dialect hand over a Generation and a small ChunkFormat; this module waits for
the first event BEFORE sending headers (so load failures, context overflow and full queues keep
their status codes), watches for the client going away (which cancels the generation), and renders
a mid-stream failure as the dialect's error event. Per-token work is one json.dumps of the text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from models.backend import Done, Token
from models.errors import Cancelled, RouterError
from router.routing import Route

log = logging.getLogger("router.streaming")

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


class GenerationFailed(RouterError):
    """The backend failed after it had started generating."""

    status = 500
    code = "generation_failed"
    type = "server_error"


class ChunkFormat(Protocol):
    """How one dialect writes a generation: per-token chunks, the closing chunk(s), or one body."""

    media_type: str

    def head(self) -> bytes:
        """Bytes sent before the first token (OpenAI chat: the role delta); may be empty."""
        ...

    def token(self, text: str) -> bytes: ...

    def tail(self, done: Done) -> bytes:
        """The closing chunk(s) of a stream: finish reason, usage, [DONE]..."""
        ...

    def error(self, err: RouterError) -> bytes:
        """A failure after headers were sent, as the dialect's error event."""
        ...

    def body(self, text: str, done: Done) -> Any:
        """The whole non-streaming response (a JSON-able object)."""
        ...


@dataclass
class Outcome:
    """A finished generation, collected."""

    text: str
    done: Done


def route_headers(route: Route) -> dict[str, str]:
    return {
        "x-route-label": route.label,
        "x-route-model": route.model_id,
        "x-route-confidence": f"{route.confidence:.4f}",
    }


def json_str(text: str) -> str:
    """A JSON string literal: the only per-token serialisation work."""
    return json.dumps(text, ensure_ascii=False)


class ActiveGeneration:
    """A Generation being served: its iterator, its first event, and the watch for a vanished client."""

    def __init__(self, gen: Any, request: Request | None) -> None:
        self.gen = gen
        self.events: AsyncIterator = gen.__aiter__()
        self.first: Any = None
        self.first_token_s: float | None = None
        self._started = time.perf_counter()
        self._watch: asyncio.Task | None = None
        if request is not None:
            self._watch = asyncio.create_task(self._watch_disconnect(request))

    async def _watch_disconnect(self, request: Request) -> None:
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.debug("client went away: cancelling %s", getattr(self.gen, "model_id", "?"))
                self.gen.cancel()
                return

    async def start(self) -> None:
        """Wait for the first event; pre-token failures raise here, before any header is sent."""
        try:
            self.first = await self.events.__anext__()
        except StopAsyncIteration:
            self.close()
            raise GenerationFailed("The model produced no events.") from None
        except BaseException:
            self.close()
            raise
        self.first_token_s = time.perf_counter() - self._started

    async def __aiter__(self) -> AsyncIterator[Token | Done]:
        if self.first is not None:
            first, self.first = self.first, None
            yield first
        async for event in self.events:
            yield event

    def close(self) -> None:
        """Stop watching; cancel the generation unless it already finished (idempotent)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.gen.cancel()
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            # Closing the async iterator cancels on the pool side too; never let it raise here.
            task = asyncio.ensure_future(aclose())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


async def start_generation(gen: Any, request: Request | None) -> ActiveGeneration:
    active = ActiveGeneration(gen, request)
    await active.start()
    return active


async def collect(active: ActiveGeneration) -> Outcome:
    """Run a started generation to its end; mid-generation failure raises GenerationFailed."""
    parts: list[str] = []
    done: Done | None = None
    try:
        async for event in active:
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Done):
                done = event
                break
    finally:
        active.close()
    if done is None:
        raise GenerationFailed("The generation ended without a final event.")
    if done.finish_reason == "error":
        raise GenerationFailed(f"The model failed while generating: {done.error or 'unknown error'}")
    return Outcome("".join(parts), done)


class Recorder(Protocol):
    """What streaming tells the metrics about one request."""

    def first_token(self, seconds: float) -> None: ...

    def finish(self, done: Done | None, status: int) -> None: ...


async def respond(
    request: Request,
    gen: Any,
    fmt: ChunkFormat,
    *,
    stream: bool,
    route: Route,
    recorder: Recorder | None = None,
    on_close: Any = None,
) -> Response:
    """Serve one Generation in the caller's dialect (stream or one body)."""
    headers = route_headers(route)
    if stream:
        gen.hand_off_first_token()  # the first chunk is written before the worker decodes on
    try:
        active = await start_generation(gen, request)
    except BaseException:
        if on_close is not None:
            on_close()
        raise
    if recorder is not None and active.first_token_s is not None:
        recorder.first_token(active.first_token_s)

    if not stream:
        try:
            outcome = await collect(active)  # a failure here is counted by the error handler
        finally:
            if on_close is not None:
                on_close()
        if recorder is not None:
            recorder.finish(outcome.done, 200)
        return JSONResponse(fmt.body(outcome.text, outcome.done), headers=headers)

    async def body() -> AsyncIterator[bytes]:
        done: Done | None = None
        status = 200
        try:
            head = fmt.head()
            if head:
                yield head
            sent_first = False
            async for event in active:
                if isinstance(event, Token):
                    if event.text:
                        yield fmt.token(event.text)
                    if not sent_first:  # resumed here once the chunk was handed to the socket
                        sent_first = True
                        gen.first_token_sent()
                elif isinstance(event, Done):
                    done = event
                    break
            if done is None:
                status = 500
                yield fmt.error(GenerationFailed("The generation ended without a final event."))
            elif done.finish_reason == "error":
                status = 500
                yield fmt.error(GenerationFailed(f"The model failed while generating: {done.error or 'unknown error'}"))
            else:
                yield fmt.tail(done)
        except RouterError as err:
            status = err.status
            if not isinstance(err, Cancelled):
                yield fmt.error(err)
        except Exception as exc:  # a bug must still end the stream in the dialect's shape
            log.exception("stream failed")
            status = 500
            yield fmt.error(GenerationFailed(f"Internal error while streaming ({exc.__class__.__name__})."))
        finally:
            active.close()
            if on_close is not None:
                on_close()
            if recorder is not None:
                recorder.finish(done, status if done is None or done.finish_reason != "cancelled" else 499)

    return StreamingResponse(
        body(), media_type=fmt.media_type, headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

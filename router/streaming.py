"""The one path from a Generation's events to an HTTP response: SSE, NDJSON or one JSON body.

Handlers of every dialect hand over a Generation and a small ChunkFormat; this module waits for
the first event BEFORE sending headers (so load failures, context overflow and full queues keep
their status codes), watches for the client going away (which cancels the generation), and renders
a mid-stream failure as the dialect's error event. Per-token work is one json.dumps of the text.

Agents give up on a silent connection (Codex after 300 s without an event, opencode without
headers), while a 20k-token agent prompt takes minutes to evaluate on a laptop CPU. So a stream
whose format can keep a connection alive sends its headers once the first event is EARLY_HEADERS_S
late, then a keep-alive every KEEPALIVE_S until the first event; a failure after that point arrives
as the dialect's error event instead of a status code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from models.errors import Cancelled, RouterError
from models.events import Embeddings, Event, Finish, TextDelta, ToolCallDelta, ToolCallStart
from models.pool import Generation
from router.routing import Route

log = logging.getLogger("router.streaming")

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"

EARLY_HEADERS_S = 5.0
KEEPALIVE_S = 10.0


class GenerationFailed(RouterError):
    """The backend failed after it had started generating."""

    status = 500
    code = "generation_failed"
    type = "server_error"


@dataclass
class CollectedCall:
    """A tool call gathered from its start and argument events (arguments as the JSON text sent)."""

    id: str
    name: str
    arguments: str = ""


class CallCollector:
    """Whole tool calls from their start and argument events (collect() and formats that send calls whole)."""

    def __init__(self) -> None:
        self.calls: list[CollectedCall] = []

    def add(self, event: ToolCallStart | ToolCallDelta) -> None:
        if isinstance(event, ToolCallStart):
            self.calls.append(CollectedCall(event.id, event.name))
        else:
            self.calls[event.index].arguments += event.arguments


@dataclass
class Outcome:
    """A finished generation, collected: its text, its tool calls, and how it ended."""

    text: str
    finish: Finish
    tool_calls: list[CollectedCall] = field(default_factory=list)
    vectors: list[list[float]] = field(default_factory=list)  # an embedding request's


class ChunkFormat(Protocol):
    """How one dialect writes a generation: per-event chunks, the closing chunk(s), or one body."""

    media_type: str

    def head(self) -> bytes:
        """Bytes sent before the first event (OpenAI chat: the role delta); may be empty."""
        ...

    # Whether keepalive() exists for this stream; where not, headers wait for the first event.
    keeps_alive: bool

    def keepalive(self) -> bytes:
        """Bytes that keep a stream alive while the prompt is evaluated (an SSE comment, Anthropic's
        ping); asked for only when `keeps_alive`, each time it is sent."""
        ...

    def text(self, text: str) -> bytes: ...

    def tool_call_start(self, event: ToolCallStart) -> bytes: ...

    def tool_call_delta(self, event: ToolCallDelta) -> bytes: ...

    def tail(self, finish: Finish) -> bytes:
        """The closing chunk(s) of a stream: finish reason, usage, [DONE]..."""
        ...

    def error(self, err: RouterError) -> bytes:
        """A failure after headers were sent, as the dialect's error event."""
        ...

    def body(self, outcome: Outcome) -> Any:
        """The whole non-streaming response (a JSON-able object)."""
        ...


class TextOnly:
    """For formats of endpoints that never carry tools (raw completions, FIM): a call is a bug."""

    def tool_call_start(self, event: ToolCallStart) -> bytes:
        raise GenerationFailed("A tool call reached an endpoint that cannot carry one.")

    def tool_call_delta(self, event: ToolCallDelta) -> bytes:
        raise GenerationFailed("A tool call reached an endpoint that cannot carry one.")


def sse_event(name: str, data: dict[str, Any]) -> str:
    """A named SSE event (`event:` + `data:`), as the Anthropic and Responses streams write them."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def json_str(text: str) -> str:
    """A JSON string literal: the only per-token serialisation work."""
    return json.dumps(text, ensure_ascii=False)


class ActiveGeneration:
    """A Generation being served: its iterator, its first event, and the watch for a vanished client."""

    def __init__(self, gen: Generation, request: Request | None) -> None:
        self.gen = gen
        self.events: AsyncIterator[Event] = gen.__aiter__()
        self.first: Event | None = None
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
                log.debug("client went away: cancelling %s", self.gen.model_id)
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

    async def __aiter__(self) -> AsyncIterator[Event]:
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
        # Closing the async iterator cancels on the pool side too; never let it raise here.
        task = asyncio.ensure_future(self.events.aclose())  # type: ignore[attr-defined]
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


async def start_generation(gen: Generation, request: Request | None) -> ActiveGeneration:
    active = ActiveGeneration(gen, request)
    await active.start()
    return active


def failure_of(finish: Finish | None) -> GenerationFailed | None:
    """Why a generation that has ended (or stopped sending) counts as failed, if it does."""
    if finish is None:
        return GenerationFailed("The generation ended without a final event.")
    if finish.reason == "error":
        return GenerationFailed(f"The model failed while generating: {finish.error or 'unknown error'}")
    return None


async def collect(active: ActiveGeneration) -> Outcome:
    """Run a started generation to its end; mid-generation failure raises GenerationFailed."""
    parts: list[str] = []
    calls = CallCollector()
    vectors: list[list[float]] = []
    finish: Finish | None = None
    try:
        async for event in active:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, ToolCallStart | ToolCallDelta):
                calls.add(event)
            elif isinstance(event, Embeddings):
                vectors = event.vectors
            elif isinstance(event, Finish):
                finish = event
                break
    finally:
        active.close()
    failed = failure_of(finish)
    if failed is not None:
        raise failed
    assert finish is not None
    return Outcome("".join(parts), finish, calls.calls, vectors)


class Recorder(Protocol):
    """What streaming tells the metrics about one request."""

    def first_token(self, seconds: float) -> None: ...

    def finish(self, done: Finish | None, status: int) -> None: ...


async def respond(
    request: Request,
    gen: Generation,
    fmt: ChunkFormat,
    *,
    stream: bool,
    route: Route,
    recorder: Recorder | None = None,
    on_close: Callable[[], None] | None = None,
) -> Response:
    """Serve one Generation in the caller's dialect (stream or one body)."""
    def closed() -> None:
        if on_close is not None:
            on_close()

    if stream:
        gen.hand_off_first_token()  # the first chunk is written before the worker decodes on
    active = ActiveGeneration(gen, request)
    starting = asyncio.ensure_future(active.start())
    try:
        if stream and fmt.keeps_alive:
            done, _ = await asyncio.wait({starting}, timeout=EARLY_HEADERS_S)
            if not done:  # a long prompt: headers now, the first event when it comes
                return StreamingResponse(_stream(active, fmt, recorder, closed, starting=starting),
                                         media_type=fmt.media_type, headers=stream_headers(route))
        await starting
    except BaseException:
        starting.cancel()
        active.close()
        closed()
        raise
    if recorder is not None and active.first_token_s is not None:
        recorder.first_token(active.first_token_s)
    if not stream:
        try:
            outcome = await collect(active)  # a failure here is counted by the error handler
        finally:
            closed()
        if recorder is not None:
            recorder.finish(outcome.finish, 200)
        return JSONResponse(fmt.body(outcome), headers=route.headers())
    return StreamingResponse(_stream(active, fmt, recorder, closed), media_type=fmt.media_type,
                             headers=stream_headers(route))


def stream_headers(route: Route) -> dict[str, str]:
    return {**route.headers(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _stream(active: ActiveGeneration, fmt: ChunkFormat, recorder: Recorder | None,
                  closed: Callable[[], None], starting: asyncio.Future | None = None) -> AsyncIterator[bytes]:
    """The chunks of a generation (started, or still `starting`: keep-alives until its first event);
    always ends in the dialect's tail or error event."""
    finish: Finish | None = None
    status = 200
    try:
        head = fmt.head()
        if head:
            yield head
        if starting is not None:
            while not (await asyncio.wait({starting}, timeout=KEEPALIVE_S))[0]:
                yield fmt.keepalive()
            starting.result()  # a failure before the first event raises here, rendered below
            if recorder is not None and active.first_token_s is not None:
                recorder.first_token(active.first_token_s)
        sent_first = False
        async for event in active:
            if isinstance(event, Finish):
                finish = event
                break
            if isinstance(event, TextDelta):
                if event.text:
                    yield fmt.text(event.text)
            elif isinstance(event, ToolCallStart):
                yield fmt.tool_call_start(event)
            elif isinstance(event, ToolCallDelta):
                yield fmt.tool_call_delta(event)
            if not sent_first:  # resumed here once the chunk was handed to the socket
                sent_first = True
                active.gen.first_token_sent()
        failed = failure_of(finish)
        if failed is not None:
            status = 500
            yield fmt.error(failed)
        else:
            assert finish is not None
            yield fmt.tail(finish)
    except RouterError as err:
        status = err.status
        if not isinstance(err, Cancelled):
            yield fmt.error(err)
    except Exception as exc:  # a bug must still end the stream in the dialect's shape
        log.exception("stream failed")
        status = 500
        yield fmt.error(GenerationFailed(f"Internal error while streaming ({exc.__class__.__name__})."))
    finally:
        if starting is not None:
            starting.cancel()
        active.close()
        closed()
        if recorder is not None:
            recorder.finish(finish, status if finish is None or finish.reason != "cancelled" else 499)

"""One upstream HTTP stream: its SSE events as they arrive, and the deadlines that cut it.

Why a watchdog: a blocked socket read cannot check a cancel flag, and httpx applies one read
timeout to every read. The watchdog shuts the stream's socket down when the caller cancels, when
the first token is late, or when the stream falls silent, which wakes the blocked read at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Iterator

import httpx

CANCELLED = "cancelled"
FIRST_TOKEN_TIMEOUT = "first_token_timeout"
IDLE_TIMEOUT = "idle_stream_timeout"

# How often the watchdog looks at live streams: the worst-case delay of a cancel or timeout.
WATCH_INTERVAL_S = 0.05


def iter_sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payloads of an SSE stream, one per line as it arrives (comments and pings skipped).

    Upstreams put one JSON object per `data:` line; multi-line data events are not used by any of
    them, so each data line is its own event and nothing waits for the blank separator line.
    """
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].lstrip(" ")


def parse_json(payload: str) -> dict[str, Any] | None:
    """A data payload as a JSON object, or None when it is not one (a stray keep-alive)."""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class StreamGuard:
    """Deadlines and cancellation for one stream; the watchdog calls `expired()` and cuts the socket."""

    def __init__(
        self,
        cancel: threading.Event,
        *,
        first_token_timeout_s: float,
        idle_stream_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cancel = cancel
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_stream_timeout_s = idle_stream_timeout_s
        self._clock = clock
        self.started_at = clock()
        self.last_activity = self.started_at
        self.first_token_at: float | None = None
        self.reason: str | None = None  # set when the watchdog cut the stream
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remembers the socket of a freshly opened connection."""
        if event == "connection.connect_tcp.complete":
            self._attach_stream(info.get("return_value"))

    def attach_response(self, response: httpx.Response) -> None:
        """Remembers the socket of a reused keep-alive connection once the headers are in."""
        if self._socket is None:
            self._attach_stream(response.extensions.get("network_stream"))

    def _attach_stream(self, stream: Any) -> None:
        try:
            sock = stream.get_extra_info("socket") if stream is not None else None
        except Exception:  # a transport without sockets (never the case for http/https)
            sock = None
        with self._lock:
            self._socket = sock
            cut = self.reason is not None
        if cut:
            self._shutdown()

    def activity(self) -> None:
        """Bytes arrived: the stream is alive."""
        self.last_activity = self._clock()

    def got_first_token(self) -> None:
        now = self._clock()
        self.first_token_at = now
        self.last_activity = now

    def expired(self) -> str | None:
        """Why the stream must be cut now, or None."""
        if self.cancel.is_set():
            return CANCELLED
        now = self._clock()
        if self.first_token_at is None:
            if now - self.started_at > self.first_token_timeout_s:
                return FIRST_TOKEN_TIMEOUT
        elif now - self.last_activity > self.idle_stream_timeout_s:
            return IDLE_TIMEOUT
        return None

    def cut(self, reason: str) -> None:
        """Record why and wake the blocked read by shutting the socket down (idempotent)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            sock = self._socket
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the read has ended anyway

    def describe(self) -> str:
        if self.reason == FIRST_TOKEN_TIMEOUT:
            return f"no first token within {self.first_token_timeout_s:g}s"
        if self.reason == IDLE_TIMEOUT:
            return f"stream silent for more than {self.idle_stream_timeout_s:g}s"
        return self.reason or ""


class StreamWatchdog:
    """One thread per backend that watches its live streams; it sleeps while none is live."""

    def __init__(self, name: str = "upstream-watchdog") -> None:
        self._guards: set[StreamGuard] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def watch(self, guard: StreamGuard) -> None:
        with self._cond:
            self._guards.add(guard)
            self._cond.notify()

    def unwatch(self, guard: StreamGuard) -> None:
        with self._cond:
            self._guards.discard(guard)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._guards and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                guards = list(self._guards)
            for guard in guards:
                reason = guard.expired()
                if reason is not None:
                    guard.cut(reason)
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(WATCH_INTERVAL_S)

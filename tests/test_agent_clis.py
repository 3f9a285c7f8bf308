"""Real coding agents from npm against the router with the real Qwen 0.5B: opencode and qwen-code
(OpenAI chat with tools), Claude Code (/v1/messages), Codex (/v1/responses, and `--oss`).

Marked `agent_cli` and `qwen` (on 2 shared CPU cores: opencode ~4 min, qwen-code ~16 min, Claude
Code ~2.5 min, Codex ~5 min, Codex --oss seconds after it; `-m "not agent_cli"` leaves them out;
each test carries its own timeout, see CLI_TIMEOUT_S). Skipped, saying why, where npm is missing
or the install fails. Asserted: the agent ran to its end with exit code 0, printed no protocol
error, the router answered no request with a 4xx/5xx, and it served at least one request carrying
`tools`; for Claude Code and Codex also that every stream is well formed for its dialect and that
the tool calls the router delivered came back as results. Whether the 0.5B model completed the
task is printed (run with -s) and written to agent-outcome.json in the test's tmp dir, not asserted.

    .venv/bin/python -m pytest -q -p no:cacheprovider -s -m agent_cli tests/test_agent_clis.py
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from agent_clis import (CLAUDE_CODING_TOOLS, CODEX_SMALL_FEATURES, CliUnavailable, RequestTap,
                        anthropic_stream_problems, claude_invocation, codex_invocation, install_cli,
                        opencode_invocation, protocol_errors, qwen_invocation, responses_stream_problems, run_cli)
from server_harness import isolated_env, live_server

from models.catalog import catalog_from_files
from router.app import create_app
from router.settings import Settings
from router.state import app_state

# Each agent gets CLI_TIMEOUT_S (AGENT_CLI_TIMEOUT_S overrides it); the test, that plus time to let
# the router finish a prompt a killed agent left behind (this marker overrides `--timeout`).
# Measured on 2 shared cores (~30 prompt tokens/s): opencode 3.5-4.5 min, qwen-code ~16 min, most
# of it qwen-code's 15k-token first turn.
CLI_TIMEOUT_S = float(os.environ.get("AGENT_CLI_TIMEOUT_S", "1200"))
DRAIN_TIMEOUT_S = 240
pytestmark = [pytest.mark.agent_cli, pytest.mark.qwen, pytest.mark.timeout(CLI_TIMEOUT_S + DRAIN_TIMEOUT_S + 50)]

TASK = "create hello.py that prints hello"
MODEL = "auto"  # every label is Qwen, so the classifier's pick does not matter
INVOCATIONS = {"opencode": opencode_invocation, "qwen": qwen_invocation}


@pytest.fixture(scope="module")
def server(qwen_gguf, tmp_path_factory):
    """Every label on Qwen, with a context large enough for the agents' 7k-15k token turns; the
    app sits behind a RequestTap, which records requests and statuses and changes nothing."""
    tmp = tmp_path_factory.mktemp("agents")
    with isolated_env(tmp):
        catalog = catalog_from_files({label: qwen_gguf for label in ("code_edit", "chat", "instruct", "fim")},
                                     n_ctx=32768)
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog)
        tap = RequestTap(app)
        with live_server(tap) as srv:
            srv.tap, srv.real_app = tap, app
            yield srv


def drain(server, timeout_s: float) -> bool:
    """Wait for the pool to go idle: a generation the CLI left behind (it stops within one prompt
    slice once cancelled) must end before the server stops, or llama.cpp can crash the process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(st.generating == 0 and st.queue_depth == 0 for st in app_state(server.real_app).pool.status()):
            return True
        time.sleep(1)
    return False


@pytest.mark.parametrize("agent", ["opencode", "qwen"])
def test_agent_cli_runs_a_one_step_task_without_protocol_errors(server, agent, tmp_path):
    try:
        exe = install_cli(agent)
    except CliUnavailable as exc:
        pytest.skip(f"{agent} CLI unavailable: {exc}")
    workdir, home = tmp_path / "work", tmp_path / "home"
    extra = {"api_timeout_s": CLI_TIMEOUT_S} if agent == "qwen" else {}
    inv = INVOCATIONS[agent](exe, base_url=server.url, model=MODEL, task=TASK, workdir=workdir, home=home, **extra)
    run, requests, outcome = run_agent(server, agent, inv, tmp_path, workdir, home)

    failed = [r.summary() for r in requests if (r.status or 0) >= 400]
    assert not run.timed_out, f"{agent} did not finish in {CLI_TIMEOUT_S} s"
    assert not failed, f"the router refused {agent}'s requests: {failed}"
    assert not outcome["protocol_errors"], outcome["protocol_errors"]
    assert run.returncode == 0, run.stderr[-3000:] or run.stdout[-3000:]
    assert any(r.tools and r.status == 200 for r in requests), f"no request with tools was served: {outcome['requests']}"


# --- Claude Code (/v1/messages) and Codex (/v1/responses) -------------------------------------

# Claude Code's default first turn is ~19k tokens of the Qwen tokenizer (24 tools, 16.5k of it),
# over 10 minutes of prefill here. The test gives it the four tools a one-file task needs
# (`--tools`, CLAUDE_CODING_TOOLS): ~3k tokens. AGENT_CLI_CLAUDE_TOOLS=default runs the full set.
_claude_tools = os.environ.get("AGENT_CLI_CLAUDE_TOOLS", ",".join(CLAUDE_CODING_TOOLS))
CLAUDE_TOOLS = None if _claude_tools == "default" else tuple(t for t in _claude_tools.split(",") if t)
CLAUDE_MAX_TURNS = int(os.environ.get("AGENT_CLI_CLAUDE_MAX_TURNS", "6"))
# Claude Code asks for max_tokens 64000. Qwen 0.5B once answered with 245 tool calls in a single
# response (Claude Code ran each as it streamed in: one turn, so --max-turns did not stop it) and
# once generated for over 10 minutes; 1024 output tokens per turn is plenty for hello.py.
CLAUDE_MAX_OUTPUT_TOKENS = int(os.environ.get("AGENT_CLI_CLAUDE_MAX_OUTPUT_TOKENS", "1024"))
# Codex's default first turn is ~8.5k tokens (9 tools); without its sub-agent and goal tools
# (CODEX_SMALL_FEATURES) ~5.3k. With them Qwen 0.5B called spawn_agent and the run took 10 min.
# AGENT_CLI_CODEX_TOOLS=default keeps them.
CODEX_FEATURES = None if os.environ.get("AGENT_CLI_CODEX_TOOLS") == "default" else CODEX_SMALL_FEATURES
ANTHROPIC_PATH, RESPONSES_PATH = "/v1/messages", "/v1/responses"


def run_agent(server, agent: str, inv, tmp_path, workdir, home) -> tuple[Any, list, dict]:
    """Run `inv` against `server`, wait for the router to go idle, and write (and print) the
    outcome: exit, files, what each request got. Returns the run, the tapped requests, the outcome."""
    first = len(server.tap.requests)
    run = run_cli(inv, timeout_s=CLI_TIMEOUT_S)
    started = time.monotonic()
    drained = drain(server, DRAIN_TIMEOUT_S)
    drain_s = time.monotonic() - started
    requests = server.tap.requests[first:]
    hello = workdir / "hello.py"
    outcome = {
        "agent": agent, "argv": [Path(inv.argv[0]).name] + inv.argv[1:], "returncode": run.returncode,
        "timed_out": run.timed_out, "seconds": round(run.seconds, 1),
        "hello_py_created": hello.exists(), "hello_py": hello.read_text(errors="replace") if hello.exists() else None,
        "workdir_files": sorted(p.name for p in workdir.iterdir()),
        "protocol_errors": protocol_errors(run.stdout, run.stderr),
        "requests": [r.summary() for r in requests],
        "npm_used_at_run_time": (home / ".npm").exists(),
        "router_busy_after_exit_s": round(drain_s, 1), "router_drained": drained,
        "stdout_tail": run.stdout[-2000:], "stderr_tail": run.stderr[-3000:],
    }
    (tmp_path / "agent-outcome.json").write_text(json.dumps(outcome, indent=2))
    print(f"\n=== {agent} outcome ({tmp_path / 'agent-outcome.json'}) ===\n{json.dumps(outcome, indent=2)}")
    return run, requests, outcome


def assert_agent_protocol(agent: str, run, requests: list, outcome: dict, *, path: str, stream_problems,
                          allowed_exit: str | None = None) -> list:
    """The protocol assertions shared by Claude Code and Codex; returns the requests to `path`.

    Exit 0 (or 1 with `allowed_exit` printed), no protocol error printed, no request answered with
    a 4xx/5xx, at least one request to `path` and each of them a 200 whose stream is well formed;
    every tool call the router delivered (but the last answer's, which the agent may run and then
    stop) came back as a tool result in a later request; the last answer's text printed."""
    failed = [r.summary() for r in requests if (r.status or 0) >= 400]
    assert not run.timed_out, f"{agent} did not finish in {CLI_TIMEOUT_S} s"
    assert not failed, f"the router refused {agent}'s requests: {failed}"
    assert not outcome["protocol_errors"], outcome["protocol_errors"]
    output = run.stdout + run.stderr
    ok_exit = run.returncode == 0 or (allowed_exit is not None and run.returncode == 1 and allowed_exit in output)
    assert ok_exit, f"exit {run.returncode}: {run.stderr[-3000:] or run.stdout[-3000:]}"
    turns = [r for r in requests if r.method == "POST" and r.path == path]
    assert turns, f"{agent} sent no POST {path}: {outcome['requests']}"
    for i, turn in enumerate(turns):
        assert turn.status == 200, turn.summary()
        assert turn.stream is True and turn.events, f"turn {i} was not streamed: {turn.summary()}"
        problems = stream_problems(turn.events)
        assert not problems, f"turn {i}'s stream is malformed: {problems}\n{turn.summary()}"
    for i, turn in enumerate(turns[:-1]):
        answered = {rid for later in turns[i + 1:] for rid in later.tool_results}
        lost = [cid for cid in turn.tool_call_ids if cid not in answered]
        assert not lost, f"turn {i}'s tool calls {lost} never came back as results: {[t.summary() for t in turns]}"
    final = turns[-1].text.strip()
    if run.returncode == 0 and final:
        shown = " ".join(run.stdout.split())
        assert " ".join(final.split())[:200] in shown, f"the final answer {final[:300]!r} was not printed: {run.stdout[-2000:]}"
    return turns


def test_claude_code_runs_a_one_step_task_over_the_messages_api(server, tmp_path):
    """`claude -p "create hello.py that prints hello"` (Claude Code 2.1.197) against /v1/messages.

    Claude Code runs with no `--model`, so it asks for its own default `claude-opus-…` name, which
    the router's model_aliases must answer. Reduced for CI time (2 shared cores prefill ~30
    tokens/s): `--tools Bash,Read,Write,Edit` instead of its 24 default tools cuts the first turn
    from ~19k to ~3k tokens (the agent/skill listing system message goes with them),
    `--max-turns 6` bounds a small model that keeps calling tools (it then exits 1 saying "Reached
    max turns", accepted here), and CLAUDE_CODE_MAX_OUTPUT_TOKENS=1024 bounds each turn (its
    default asks for 64000). The request shape of the full default set is in
    tests/data/agent_requests/claude_code_messages.json."""
    try:
        exe = install_cli("claude")
    except CliUnavailable as exc:
        pytest.skip(f"claude CLI unavailable: {exc}")
    workdir, home = tmp_path / "work", tmp_path / "home"
    inv = claude_invocation(exe, base_url=server.url, task=TASK, workdir=workdir, home=home, tools=CLAUDE_TOOLS,
                            max_turns=CLAUDE_MAX_TURNS, api_timeout_s=CLI_TIMEOUT_S,
                            max_output_tokens=CLAUDE_MAX_OUTPUT_TOKENS)
    run, requests, outcome = run_agent(server, "claude", inv, tmp_path, workdir, home)
    turns = assert_agent_protocol("claude", run, requests, outcome, path=ANTHROPIC_PATH,
                                  stream_problems=anthropic_stream_problems, allowed_exit="Reached max turns")
    assert all((t.model or "").startswith("claude-") for t in turns), [t.model for t in turns]
    assert turns[0].tools, f"Claude Code sent no tools: {turns[0].summary()}"


@pytest.fixture(scope="module")
def codex_dirs(tmp_path_factory):
    """One CODEX_HOME and working directory for both Codex tests: the paths are in its prompt, so
    with the same ones the second run's ~8.5k-token first turn shares its prefix with the first
    run's and the router reuses the prefill instead of redoing it."""
    base = tmp_path_factory.mktemp("codex")
    return base / "work", base / "home"


def _fresh_workdir(workdir) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)


def test_codex_exec_runs_a_one_step_task_over_the_responses_api(server, codex_dirs, tmp_path):
    """`codex exec` (Codex 0.171.0, `wire_api = "responses"`, model `auto`) against /v1/responses.

    Reduced for CI time: `[features] multi_agent = false, goals = false` leaves 4 functions and
    the `web_search` tool (which the router skips), ~5.3k tokens a turn instead of ~8.5k; its
    default set adds a `namespace` of sub-agent tools (tests/data/agent_requests/codex_responses.json)."""
    try:
        exe = install_cli("codex")
    except CliUnavailable as exc:
        pytest.skip(f"codex CLI unavailable: {exc}")
    workdir, home = codex_dirs
    _fresh_workdir(workdir)
    inv = codex_invocation(exe, base_url=server.url, model=MODEL, task=TASK, workdir=workdir, home=home,
                           stream_idle_timeout_s=CLI_TIMEOUT_S, features=CODEX_FEATURES)
    run, requests, outcome = run_agent(server, "codex", inv, tmp_path, workdir, home)
    turns = assert_agent_protocol("codex", run, requests, outcome, path=RESPONSES_PATH,
                                  stream_problems=responses_stream_problems)
    assert turns[0].tools, f"Codex sent no tools: {turns[0].summary()}"


def test_codex_oss_finds_the_router_as_ollama_and_runs_a_task(server, codex_dirs, tmp_path):
    """`codex exec --oss --local-provider ollama -m auto` with CODEX_OSS_BASE_URL at the router:
    Codex probes GET /v1/models, GET /api/version (it refuses an Ollama older than 0.13.4) and
    GET /api/tags (a model not listed there it would pull), then speaks /v1/responses."""
    try:
        exe = install_cli("codex")
    except CliUnavailable as exc:
        pytest.skip(f"codex CLI unavailable: {exc}")
    workdir, home = codex_dirs
    _fresh_workdir(workdir)
    inv = codex_invocation(exe, base_url=server.url, model=MODEL, task=TASK, workdir=workdir, home=home, oss=True,
                           stream_idle_timeout_s=CLI_TIMEOUT_S, features=CODEX_FEATURES)
    run, requests, outcome = run_agent(server, "codex --oss", inv, tmp_path, workdir, home)
    probes = {r.path: r.status for r in requests if r.method == "GET"}
    for path in ("/api/version", "/api/tags"):
        assert probes.get(path) == 200, f"Codex --oss probe {path}: {probes}"
    assert not any(r.path == "/api/pull" for r in requests), "Codex tried to pull the model: /api/tags lacks it"
    assert_agent_protocol("codex --oss", run, requests, outcome, path=RESPONSES_PATH,
                          stream_problems=responses_stream_problems)

"""Real coding agents from npm (opencode, qwen-code) against the router with the real Qwen 0.5B.

Marked `agent_cli` and `qwen` (opencode ~4 min, qwen-code ~16 min on 2 shared CPU cores;
`-m "not agent_cli"` leaves them out; each test carries its own timeout, see CLI_TIMEOUT_S). Skipped, saying why, where npm is missing or the install fails. Asserted: the agent ran to
its end with exit code 0, printed no protocol error, the router answered no request with a 4xx/5xx,
and it served at least one request carrying `tools`. Whether the 0.5B model completed the task
is printed (run with -s) and written to agent-outcome.json in the test's tmp dir, not asserted.

    .venv/bin/python -m pytest -q -p no:cacheprovider -s -m agent_cli tests/test_agent_clis.py --timeout 900
"""

from __future__ import annotations

import json
import os
import time

import pytest

from agent_clis import (CliUnavailable, RequestTap, install_cli, opencode_invocation, protocol_errors,
                        qwen_invocation, run_cli)
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
    """Wait for the pool to go idle. A chat prompt is evaluated in one llama.cpp call that a
    disconnect cannot interrupt; stopping the server under it crashes the process at exit."""
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
    first = len(server.tap.requests)
    run = run_cli(inv, timeout_s=CLI_TIMEOUT_S)
    started = time.monotonic()
    drained = drain(server, DRAIN_TIMEOUT_S)
    drain_s = time.monotonic() - started
    requests = server.tap.requests[first:]

    hello = workdir / "hello.py"
    outcome = {
        "agent": agent, "returncode": run.returncode, "timed_out": run.timed_out, "seconds": round(run.seconds, 1),
        "hello_py_created": hello.exists(), "hello_py": hello.read_text(errors="replace") if hello.exists() else None,
        "workdir_files": sorted(p.name for p in workdir.iterdir()),
        "protocol_errors": protocol_errors(run.stdout, run.stderr),
        "requests": [r.summary() for r in requests],
        "npm_used_at_run_time": (home / ".npm").exists(),
        "router_busy_after_exit_s": round(drain_s, 1), "router_drained": drained,
        "stdout_tail": run.stdout[-2000:], "stderr_tail": run.stderr[-2000:],
    }
    (tmp_path / "agent-outcome.json").write_text(json.dumps(outcome, indent=2))
    print(f"\n=== {agent} outcome ({tmp_path / 'agent-outcome.json'}) ===\n{json.dumps(outcome, indent=2)}")

    failed = [r.summary() for r in requests if (r.status or 0) >= 400]
    assert not run.timed_out, f"{agent} did not finish in {CLI_TIMEOUT_S} s"
    assert not failed, f"the router refused {agent}'s requests: {failed}"
    assert not outcome["protocol_errors"], outcome["protocol_errors"]
    assert run.returncode == 0, run.stderr[-3000:] or run.stdout[-3000:]
    assert any(r.tools and r.status == 200 for r in requests), f"no request with tools was served: {outcome['requests']}"

"""Real agent CLIs (opencode, qwen-code, Claude Code, Codex) for end-to-end checks against a live router.

`install_cli(name)` installs a pinned npm package into the user cache (reused when present) and
returns its binary; it raises `CliUnavailable` (the test skips, saying why) when npm is missing or
the install fails. `opencode_invocation`, `qwen_invocation`, `claude_invocation` and
`codex_invocation` write each CLI's offline configuration into a throwaway HOME and working
directory and return the argv and environment to run it with: nothing touches the real home,
and every setting that phones home is off (see
/work/shared/PROTOCOLS-AGENTS.md §8). `RequestTap` records what the router was asked and what it
answered, at the ASGI boundary, without changing either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

# name -> (npm package, pinned version, binary under node_modules/.bin)
CLI_PACKAGES: dict[str, tuple[str, str, str]] = {
    "opencode": ("opencode-ai", "1.18.33", "opencode"),
    "qwen": ("@qwen-code/qwen-code", "0.15.10", "qwen"),
    "claude": ("@anthropic-ai/claude-code", "2.1.197", "claude"),
    "codex": ("@openai/codex", "0.171.0", "codex"),
}
# opencode npm-installs this into each config dir it reads, in the background, at every start,
# unless node_modules there already holds what package.json asks for; it bundles its providers
# (@ai-sdk/openai-compatible included), so this is the only package it would fetch.
OPENCODE_CONFIG_DEPS = ("@opencode-ai/plugin", CLI_PACKAGES["opencode"][1])
INSTALL_TIMEOUT_S = 900
DONE_MARKER = ".prompt-router-installed"


class CliUnavailable(Exception):
    """The CLI cannot be installed here (the reason is the message)."""


def cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("prompt-router")) / "agent-clis"


def install_package(package: str, version: str, binary: str | None = None) -> Path:
    """The npm prefix holding `package@version`, installed on first use (reused afterwards)."""
    prefix = cache_root() / f"{package.replace('/', '+')}@{version}"
    if (prefix / DONE_MARKER).exists():
        return prefix
    npm = shutil.which("npm")
    if npm is None:
        raise CliUnavailable(f"npm is not on PATH: cannot install {package}@{version}")
    if shutil.which("node") is None:
        raise CliUnavailable(f"node is not on PATH: cannot run {package}@{version}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the final place, then move it in: a killed install never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{package.replace('/', '+')}-", dir=prefix.parent))
    try:
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", f"{package}@{version}"],
                cwd=staging, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise CliUnavailable(f"npm install {package}@{version} took over {INSTALL_TIMEOUT_S} s") from None
        except OSError as exc:
            raise CliUnavailable(f"npm install {package}@{version} could not start: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-1500:]
            raise CliUnavailable(f"npm install {package}@{version} failed (exit {done.returncode}): {tail}")
        if binary is not None and not (staging / "node_modules" / ".bin" / binary).exists():
            raise CliUnavailable(f"npm install {package}@{version} left no node_modules/.bin/{binary}")
        (staging / DONE_MARKER).write_text(f"{package}@{version}\n")
        if prefix.exists():
            shutil.rmtree(prefix)
        staging.rename(prefix)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return prefix


def install_cli(name: str) -> Path:
    """The binary of the pinned CLI `name` (a key of CLI_PACKAGES), installed with npm on first use.

    For opencode this also installs the one package it would otherwise fetch from npm at every
    start (`@opencode-ai/plugin`, into its config dir; see `opencode_invocation`)."""
    package, version, binary = CLI_PACKAGES[name]
    exe = install_package(package, version, binary) / "node_modules" / ".bin" / binary
    if name == "opencode":
        install_package(*OPENCODE_CONFIG_DEPS)
    return exe


def isolated_home_env(home: Path) -> dict[str, str]:
    """A minimal environment whose HOME and XDG dirs all lie under `home` (created here).

    Built from scratch, not from os.environ: no real API keys, proxies or configs leak in."""
    dirs = {"XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share", "XDG_CACHE_HOME": ".cache",
            "XDG_STATE_HOME": ".local/state"}
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "TERM": "dumb", "NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "TMPDIR": str(home / "tmp")}
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    for key, rel in dirs.items():
        path = home / rel
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    return env


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


OPENCODE_PROVIDER = "route"


def opencode_invocation(exe: Path, *, base_url: str, model: str, task: str, workdir: Path, home: Path,
                        context: int = 32768) -> Invocation:
    """`opencode run` against the router: an opencode.json in `workdir` with one openai-compatible
    provider whose only model is `model`, used for the main turn and for titles alike."""
    workdir.mkdir(parents=True, exist_ok=True)
    ref = f"{OPENCODE_PROVIDER}/{model}"
    config = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": ref,
        "small_model": ref,  # the title request stays on the router too
        "permission": {"edit": "allow", "bash": "allow", "webfetch": "deny"},
        "provider": {
            OPENCODE_PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "prompt-router",
                "options": {"baseURL": base_url.rstrip("/") + "/v1", "apiKey": "x",
                            # prompt processing of a 7k-token turn on a small CPU takes minutes
                            "timeout": False, "headerTimeout": 600_000, "chunkTimeout": 600_000},
                "models": {model: {"name": model, "tool_call": True, "limit": {"context": context, "output": 4096}}},
            }
        },
    }
    (workdir / "opencode.json").write_text(json.dumps(config, indent=2))
    env = isolated_home_env(home)
    _seed_opencode_config_dir(Path(env["XDG_CONFIG_HOME"]) / "opencode")
    env.update({
        "PWD": str(workdir),  # opencode takes its project directory from PWD, not the process's cwd
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
        "OPENCODE_DISABLE_TERMINAL_TITLE": "1",
    })
    return Invocation([str(exe), "run", "--print-logs", "--log-level", "WARN", "--model", ref, task], env, workdir)


def _seed_opencode_config_dir(config_dir: Path) -> None:
    """Give opencode's global config dir the dependencies it checks for, from the cache, so that it
    runs no npm install at start (it skips one when package-lock.json lists package.json's deps)."""
    deps = cache_root() / f"{OPENCODE_CONFIG_DEPS[0].replace('/', '+')}@{OPENCODE_CONFIG_DEPS[1]}"
    if not (deps / DONE_MARKER).exists():
        return  # opencode installs it itself (npm is reachable) or logs a warning and goes on
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(deps / name, config_dir / name)
    (config_dir / "node_modules").symlink_to(deps / "node_modules", target_is_directory=True)


def qwen_invocation(exe: Path, *, base_url: str, model: str, task: str, workdir: Path, home: Path,
                    api_timeout_s: float = 600) -> Invocation:
    """`qwen -p TASK --approval-mode yolo` (yolo adds the file-writing tools) with OpenAI auth from
    the environment and ~/.qwen/settings.json turning statistics, telemetry and updates off."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = isolated_home_env(home)
    settings = {
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "general": {"enableAutoUpdate": False},
        "security": {"auth": {"selectedType": "openai"}},
    }
    (home / ".qwen").mkdir(parents=True, exist_ok=True)
    (home / ".qwen" / "settings.json").write_text(json.dumps(settings, indent=2))
    env.update({
        "OPENAI_BASE_URL": base_url.rstrip("/") + "/v1",
        "OPENAI_API_KEY": "x",
        "OPENAI_MODEL": model,
        "QWEN_TELEMETRY_ENABLED": "false",
        "QWEN_CODE_DISABLE_PRECONNECT": "1",
        # Its default is 120 s: shorter than a 15k-token first turn here, and the router sends its
        # headers only with the first token. A timed-out request is retried from scratch.
        "QWEN_CODE_API_TIMEOUT_MS": str(int(api_timeout_s * 1000)),
    })
    return Invocation([str(exe), "-p", task, "--approval-mode", "yolo"], env, workdir)


# Claude Code's built-in tools for `claude_invocation(tools=...)`: the ones a one-file task needs.
# Its default set is 24 tools (~16.5k of its ~19k-token first turn); with these four the first turn
# is ~3k tokens, and the agent, skill and cron tools and the system message listing them go away.
CLAUDE_CODING_TOOLS = ("Bash", "Read", "Write", "Edit")


def claude_invocation(exe: Path, *, base_url: str, task: str, workdir: Path, home: Path,
                      tools: tuple[str, ...] | None = CLAUDE_CODING_TOOLS, max_turns: int | None = None,
                      api_timeout_s: float = 1200, model: str | None = None,
                      max_output_tokens: int | None = None) -> Invocation:
    """`claude -p TASK --permission-mode acceptEdits` against the router's Anthropic dialect.

    With `model` None there is no `--model`: Claude Code asks for its own default
    (`claude-opus-…`), which the router's `model_aliases` must map. Auth is ANTHROPIC_AUTH_TOKEN (sent as a bearer token) with
    ANTHROPIC_API_KEY empty; CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC stops its calls home and its
    title request. `--permission-mode acceptEdits` lets it write files (as root it refuses
    `--dangerously-skip-permissions`). `tools` goes to `--tools` (None: its full default set);
    `max_turns` to `--max-turns` (it then exits 1 with "Reached max turns"); `max_output_tokens`
    to CLAUDE_CODE_MAX_OUTPUT_TOKENS, its request's `max_tokens` (default 64000: a small model
    that never stops generates until the context is full, and parallel tool calls all land in one
    turn, which --max-turns does not bound)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = isolated_home_env(home)
    env.update({
        "ANTHROPIC_BASE_URL": base_url.rstrip("/"),  # no /v1: it appends /v1/messages itself
        "ANTHROPIC_AUTH_TOKEN": "x",
        "ANTHROPIC_API_KEY": "",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # Its default is 600 s per request; a long first turn on a small CPU takes minutes to
        # prefill, and a timed-out request is retried from scratch.
        "API_TIMEOUT_MS": str(int(api_timeout_s * 1000)),
    })
    if max_output_tokens is not None:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output_tokens)
    argv = [str(exe), "-p", task, "--permission-mode", "acceptEdits"]
    if tools is not None:
        argv += ["--tools", ",".join(tools)]
    if max_turns is not None:
        argv += ["--max-turns", str(max_turns)]
    if model is not None:
        argv += ["--model", model]
    return Invocation(argv, env, workdir)


CODEX_PROVIDER = "route"


# Codex features the tests may turn off: its sub-agent tools (a `multi_agent_v1` namespace of six
# functions) and goal tools are ~3.3k of the ~8.5k tokens of a first turn.
CODEX_SMALL_FEATURES = {"multi_agent": False, "goals": False}


def codex_invocation(exe: Path, *, base_url: str, model: str | None, task: str, workdir: Path, home: Path,
                     oss: bool = False, stream_idle_timeout_s: float = 1200,
                     features: dict[str, bool] | None = None) -> Invocation:
    """`codex exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox TASK` with a
    CODEX_HOME (under `home`) whose config.toml points a `wire_api = "responses"` provider at the
    router's /v1 and turns update checks, plugins, analytics and feedback off.

    `oss=True` runs `codex exec --oss --local-provider ollama` instead: Codex's built-in Ollama
    provider, pointed at the router by CODEX_OSS_BASE_URL. It first GETs /v1/models, then
    /api/version (refusing an Ollama older than 0.13.4) and /api/tags, and pulls (POST /api/pull)
    a model /api/tags does not list; its default model is `gpt-oss:20b`, so pass `model`.
    `model=None` leaves `model` out of config.toml: Codex then uses its bundled default slug
    (gpt-…) and sends another request shape (no top-level tools; tests/data/agent_requests).
    `features` adds `[features]` flags (e.g. CODEX_SMALL_FEATURES)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = isolated_home_env(home)
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    idle_ms = int(stream_idle_timeout_s * 1000)
    lines = ["check_for_update_on_startup = false"]
    if model is not None:
        lines.append(f"model = {json.dumps(model)}")
    if oss:
        lines.append('oss_provider = "ollama"')
    else:
        lines.append(f'model_provider = "{CODEX_PROVIDER}"')
    lines += [
        "",
        f"[model_providers.{CODEX_PROVIDER}]",
        'name = "prompt-router"',
        f"base_url = {json.dumps(base_url.rstrip('/') + '/v1')}",
        'wire_api = "responses"',  # "chat" is refused at start-up
        'env_key = "ROUTE_API_KEY"',
        # Its default is 300 s without an SSE event; the router sends response.created early, but
        # a long prefill can still leave a gap. A retried request is prefilled again from scratch.
        f"stream_idle_timeout_ms = {idle_ms}",
        "stream_max_retries = 1",
        "request_max_retries = 1",
        "",
        "[features]",
        "plugins = false",  # otherwise it contacts code hosting sites at start
        "remote_plugin = false",
        *(f"{name} = {str(on).lower()}" for name, on in (features or {}).items()),
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[feedback]",
        "enabled = false",
        "",
    ]
    (codex_home / "config.toml").write_text("\n".join(lines))
    env.update({"CODEX_HOME": str(codex_home), "ROUTE_API_KEY": "x"})
    argv = [str(exe), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "--color", "never"]
    if oss:
        env["CODEX_OSS_BASE_URL"] = base_url.rstrip("/") + "/v1"
        argv += ["--oss", "--local-provider", "ollama"]
        if model is not None:
            argv += ["-m", model]
    return Invocation(argv + [task], env, workdir)


@dataclass
class CliRun:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def run_cli(inv: Invocation, timeout_s: float) -> CliRun:
    """Run to completion (stdin closed); past `timeout_s`, kill its process group and say so."""
    start = time.monotonic()
    proc = subprocess.Popen(inv.argv, cwd=inv.cwd, env=inv.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return CliRun(proc.returncode, out, err, time.monotonic() - start, timed_out)


# Text that means the client and the router disagreed about the wire format. Deliberately not
# bare "invalid" or "error": agents print those about the task itself (a failed tool, bad code).
PROTOCOL_ERROR_PATTERNS = [
    r"tool calling is not supported", r"does not support tools", r"\bBad Request\b", r"AI_APICallError",
    r"AI_TypeValidationError", r"AI_JSONParseError", r"AI_InvalidResponseDataError", r"AI_NoSuchToolError",
    r"AI_RetryError", r"\b(400|404|405|415|422|500|501|502|503)\b[^\n]{0,40}\b(status|error|Bad|Not Found|Unprocessable|Internal)",
    r"\bstatus(?: code)?:? (400|404|405|415|422|500|501|502|503)\b", r"Unprocessable Entity", r"Internal Server Error",
    r"invalid_request_error", r"Invalid (JSON|response|request|schema)", r"Failed to parse", r"Unexpected token",
    r"ECONNREFUSED", r"ECONNRESET", r"socket hang up", r"TypeError: terminated", r"API Error", r"Connection error",
    # Claude Code (after a refused streaming request it retries without streaming, then says this)
    r"issue with the selected model",
    # Codex
    r"stream disconnected", r"stream closed before response\.completed", r"unexpected status \d{3}",
    r"error sending request", r"Reconnecting\.\.\. \d", r"OSS setup failed",
]
_PROTOCOL_RE = re.compile("|".join(f"(?:{p})" for p in PROTOCOL_ERROR_PATTERNS), re.IGNORECASE)
# Lines that match a pattern above but are about the model's work, not the wire: Codex checks a
# call's arguments against the tool's types and hands the model "failed to parse function
# arguments: invalid type: map, expected a boolean" as the call's output (Qwen 0.5B wrote an
# object for spawn_agent's boolean `fork_context`, in a bare-JSON call no grammar constrained).
NOT_PROTOCOL_PATTERNS = [r"failed to parse function arguments"]
_NOT_PROTOCOL_RE = re.compile("|".join(f"(?:{p})" for p in NOT_PROTOCOL_PATTERNS), re.IGNORECASE)


def protocol_errors(*texts: str) -> list[str]:
    """The lines of `texts` that carry a protocol-error marker (at most 20, each cut to 400 chars)."""
    hits = []
    for text in texts:
        for line in text.splitlines():
            if _PROTOCOL_RE.search(line) and not _NOT_PROTOCOL_RE.search(line):
                hits.append(line.strip()[:400])
    return hits[:20]


@dataclass
class TappedRequest:
    method: str
    path: str
    status: int | None = None
    model: str | None = None
    stream: bool | None = None
    tools: list[str] = field(default_factory=list)
    tool_choice: Any = None
    messages: int | None = None
    roles: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    error_body: str | None = None  # the answer's body when the status is 4xx/5xx
    finish_reasons: list[str] = field(default_factory=list)  # from the answer (JSON or SSE chunks)
    tool_calls: list[str] = field(default_factory=list)  # names of the tool calls in the answer
    query: str = ""
    tool_call_ids: list[str] = field(default_factory=list)  # ids of the answer's tool calls
    tool_args: list[str] = field(default_factory=list)  # their arguments as sent (cut to 300 chars)
    tool_results: list[str] = field(default_factory=list)  # ids the request's tool results answer
    text: str = ""  # the answer's assistant text (all text blocks / deltas / output_text joined)
    seconds: float | None = None  # from the request's arrival to the answer's last byte
    first_byte_s: float | None = None  # from the request's arrival to the answer's first body bytes
    max_gap_s: float | None = None  # the longest silence between two body chunks of the answer
    events: list[dict] = field(default_factory=list)  # SSE answers: [{"event": name or None, "data": doc}]

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v not in (None, [], "") and k not in ("events", "text")}
        if self.text:
            out["text"] = self.text[:300]
        if self.events:
            out["event_types"] = event_run_lengths(self.events)
        return out


def event_run_lengths(events: list[dict]) -> list[str]:
    """SSE event types in order, repeats folded: ["message_start", "content_block_delta x12", ...]."""
    out: list[str] = []
    last, count = None, 0
    for ev in events:
        kind = (ev.get("data") or {}).get("type") or ev.get("event") or "?"
        if kind == last:
            count += 1
            continue
        if last is not None:
            out.append(last if count == 1 else f"{last} x{count}")
        last, count = kind, 1
    if last is not None:
        out.append(last if count == 1 else f"{last} x{count}")
    return out


def parse_sse(text: str) -> list[dict]:
    """SSE frames as [{"event": name or None, "data": parsed JSON}]; comments and non-JSON data
    (`[DONE]`) are left out."""
    frames = []
    for block in re.split(r"\r?\n\r?\n", text):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if not data:
            continue
        try:
            doc = json.loads("\n".join(data))
        except ValueError:
            continue
        if isinstance(doc, dict):
            frames.append({"event": name, "data": doc})
    return frames


ANTHROPIC_STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                          "model_context_window_exceeded"}


def anthropic_stream_problems(events: list[dict]) -> list[str]:
    """What is wrong with an Anthropic Messages SSE answer (PROTOCOLS-AGENTS.md §3.4), as the
    SDK Claude Code uses reads it: empty when well formed. The `event:` name must equal the data's
    `type`; message_start first; blocks numbered from 0, each started, given deltas of its own
    kind and stopped before the next starts; tool_use input JSON that parses to an object; one
    message_delta with a known stop_reason and an int usage.output_tokens; message_stop last."""
    problems: list[str] = []
    kinds = [(ev.get("data") or {}).get("type") for ev in events]
    if not events:
        return ["no SSE events"]
    for i, ev in enumerate(events):
        if ev.get("event") != ev["data"].get("type"):
            problems.append(f"event {i}: `event: {ev.get('event')}` but data type {ev['data'].get('type')!r}")
    if kinds[0] != "message_start":
        problems.append(f"first event is {kinds[0]!r}, not message_start")
    else:
        message = events[0]["data"].get("message") or {}
        if not message.get("id") or message.get("role") != "assistant" or message.get("content") != []:
            problems.append(f"message_start.message lacks id/role/empty content: {json.dumps(message)[:300]}")
        if not isinstance((message.get("usage") or {}).get("input_tokens"), int):
            problems.append("message_start.message.usage.input_tokens is not an int")
    if kinds[-1] != "message_stop":
        problems.append(f"last event is {kinds[-1]!r}, not message_stop")
    if "error" in kinds:
        problems.append(f"error event: {json.dumps(events[kinds.index('error')]['data'])[:300]}")
    open_block: dict | None = None
    next_index = 0
    tool_uses = 0
    deltas = [i for i, k in enumerate(kinds) if k == "message_delta"]
    for i, (ev, kind) in enumerate(zip(events, kinds)):
        data = ev["data"]
        if kind == "content_block_start":
            if open_block is not None:
                problems.append(f"event {i}: block {data.get('index')} starts before block {open_block['index']} stopped")
            if data.get("index") != next_index:
                problems.append(f"event {i}: block index {data.get('index')}, expected {next_index}")
            block = data.get("content_block") or {}
            open_block = {"index": data.get("index"), "type": block.get("type"), "json": ""}
            next_index += 1
            if block.get("type") == "tool_use":
                tool_uses += 1
                if not block.get("id") or not block.get("name") or block.get("input") != {}:
                    problems.append(f"event {i}: tool_use start needs id, name and input {{}}: {json.dumps(block)[:200]}")
            elif block.get("type") not in ("text", "thinking", "redacted_thinking"):
                problems.append(f"event {i}: unknown block type {block.get('type')!r}")
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if open_block is None or data.get("index") != open_block["index"]:
                problems.append(f"event {i}: delta for block {data.get('index')}, which is not open")
                continue
            want = {"text": ("text_delta",), "tool_use": ("input_json_delta",),
                    "thinking": ("thinking_delta", "signature_delta")}.get(open_block["type"], ())
            if delta.get("type") not in want:
                problems.append(f"event {i}: {delta.get('type')!r} in a {open_block['type']} block")
            if delta.get("type") == "input_json_delta":
                open_block["json"] += delta.get("partial_json") or ""
            if delta.get("type") == "text_delta" and not isinstance(delta.get("text"), str):
                problems.append(f"event {i}: text_delta without a text string")
        elif kind == "content_block_stop":
            if open_block is None or data.get("index") != open_block["index"]:
                problems.append(f"event {i}: stop for block {data.get('index')}, which is not open")
            elif open_block["type"] == "tool_use":
                try:
                    args = json.loads(open_block["json"] or "{}")
                    if not isinstance(args, dict):
                        problems.append(f"event {i}: tool_use input is {type(args).__name__}, not an object")
                except ValueError:
                    problems.append(f"event {i}: tool_use input does not parse: {open_block['json'][:200]!r}")
            open_block = None
        elif kind == "message_delta":
            if open_block is not None:
                problems.append(f"event {i}: message_delta while block {open_block['index']} is open")
            stop = (data.get("delta") or {}).get("stop_reason")
            if stop not in ANTHROPIC_STOP_REASONS:
                problems.append(f"event {i}: stop_reason {stop!r}")
            if not isinstance((data.get("usage") or {}).get("output_tokens"), int):
                problems.append(f"event {i}: message_delta.usage.output_tokens is not an int")
            if (stop == "tool_use") != (tool_uses > 0):
                problems.append(f"event {i}: stop_reason {stop!r} with {tool_uses} tool_use block(s)")
        elif kind not in ("message_start", "message_stop", "ping", "error"):
            problems.append(f"event {i}: unknown event type {kind!r}")
    if len(deltas) != 1:
        problems.append(f"{len(deltas)} message_delta events, expected 1")
    elif "message_stop" in kinds and deltas[0] > kinds.index("message_stop"):
        problems.append("message_delta after message_stop")
    return problems


def responses_stream_problems(events: list[dict]) -> list[str]:
    """What is wrong with a Responses API SSE answer (PROTOCOLS-AGENTS.md §2.5-2.6): empty when
    well formed. Every event has `type` (equal to its `event:` name) and a `sequence_number`
    counting from 0; response.created (with response.id) first; items added and done one after
    another with output_index 0, 1, ...; each done item is what Codex deserializes (a message with
    role and output_text content, a function_call with name, call_id and string arguments that
    parse as JSON); response.completed last, with id and integer usage; no failed/error events."""
    problems: list[str] = []
    if not events:
        return ["no SSE events"]
    kinds = [(ev.get("data") or {}).get("type") for ev in events]
    for i, ev in enumerate(events):
        data = ev["data"]
        if ev.get("event") is not None and ev.get("event") != data.get("type"):
            problems.append(f"event {i}: `event: {ev.get('event')}` but data type {data.get('type')!r}")
        if data.get("sequence_number") != i:
            problems.append(f"event {i}: sequence_number {data.get('sequence_number')!r}")
    if kinds[0] != "response.created" or not ((events[0]["data"].get("response") or {}).get("id")):
        problems.append(f"first event is {kinds[0]!r} (needs response.created with response.id)")
    if kinds[-1] != "response.completed":
        problems.append(f"last event is {kinds[-1]!r}, not response.completed")
    else:
        response = events[-1]["data"].get("response") or {}
        usage = response.get("usage")
        if not response.get("id"):
            problems.append("response.completed without response.id")
        if usage is not None and not all(isinstance(usage.get(k), int)
                                         for k in ("input_tokens", "output_tokens", "total_tokens")):
            problems.append(f"response.completed usage lacks integer token counts: {usage}")
    for bad in ("response.failed", "error", "response.incomplete"):
        if bad in kinds:
            problems.append(f"{bad} event: {json.dumps(events[kinds.index(bad)]['data'])[:300]}")
    open_item: int | None = None
    next_index = 0
    for i, (ev, kind) in enumerate(zip(events, kinds)):
        data = ev["data"]
        if kind == "response.output_item.added":
            if open_item is not None:
                problems.append(f"event {i}: item {data.get('output_index')} added before item {open_item} was done")
            if data.get("output_index") != next_index:
                problems.append(f"event {i}: output_index {data.get('output_index')}, expected {next_index}")
            open_item = data.get("output_index")
            next_index += 1
        elif kind == "response.output_item.done":
            if data.get("output_index") != open_item:
                problems.append(f"event {i}: item {data.get('output_index')} done, but item {open_item} is open")
            open_item = None
            item = data.get("item") or {}
            if item.get("type") == "message":
                content = item.get("content")
                if item.get("role") != "assistant" or not isinstance(content, list) or not all(
                        isinstance(c, dict) and c.get("type") in ("output_text", "refusal") for c in content):
                    problems.append(f"event {i}: message item Codex cannot read: {json.dumps(item)[:300]}")
            elif item.get("type") == "function_call":
                args = item.get("arguments")
                if not item.get("name") or not item.get("call_id") or not isinstance(args, str):
                    problems.append(f"event {i}: function_call item Codex would skip: {json.dumps(item)[:300]}")
                else:
                    try:
                        json.loads(args)
                    except ValueError:
                        problems.append(f"event {i}: function_call arguments do not parse: {args[:200]!r}")
            elif item.get("type") == "reasoning":
                if not isinstance(item.get("summary"), list):
                    problems.append(f"event {i}: reasoning item without a summary list")
            elif item.get("type") != "custom_tool_call":
                problems.append(f"event {i}: unknown item type {item.get('type')!r}")
        elif kind in ("response.output_text.delta", "response.function_call_arguments.delta",
                      "response.content_part.added", "response.output_text.done", "response.content_part.done",
                      "response.function_call_arguments.done"):
            if data.get("output_index") != open_item:
                problems.append(f"event {i}: {kind} for item {data.get('output_index')}, but item {open_item} is open")
    if open_item is not None:
        problems.append(f"item {open_item} was never done")
    return problems


class RequestTap:
    """An ASGI pass-through around the real app that notes each HTTP request's JSON body (model,
    tools, messages) and the status, and keeps the body of error answers. It changes nothing."""

    def __init__(self, app: Any, max_error_body: int = 4000, max_answer: int = 1_000_000) -> None:
        self.app = app
        self.requests: list[TappedRequest] = []
        self.max_error_body = max_error_body
        self.max_answer = max_answer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = TappedRequest(scope["method"], scope["path"],
                              query=(scope.get("query_string") or b"").decode("latin-1"))
        self.requests.append(entry)
        started = time.monotonic()
        body = bytearray()
        error = bytearray()
        answer = bytearray()
        last_chunk: list[float] = []  # when the last non-empty body chunk went out

        async def tapped_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self._note_body(entry, bytes(body))
            return message

        async def tapped_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            elif message["type"] == "http.response.body" and (entry.status or 0) >= 400:
                if len(error) < self.max_error_body:
                    error.extend(message.get("body", b"")[: self.max_error_body - len(error)])
                if not message.get("more_body"):
                    entry.error_body = error.decode("utf-8", "replace")
                    entry.seconds = round(time.monotonic() - started, 2)
            elif message["type"] == "http.response.body":
                now = time.monotonic()
                if message.get("body"):
                    if entry.first_byte_s is None:
                        entry.first_byte_s = round(now - started, 2)
                    elif last_chunk:
                        entry.max_gap_s = round(max(entry.max_gap_s or 0.0, now - last_chunk[0]), 2)
                    last_chunk[:] = [now]
                if len(answer) < self.max_answer:
                    answer.extend(message.get("body", b""))
                if not message.get("more_body"):
                    entry.seconds = round(time.monotonic() - started, 2)
                    self._note_answer(entry, answer.decode("utf-8", "replace"))
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)

    @staticmethod
    def _note_body(entry: TappedRequest, raw: bytes) -> None:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        entry.fields = sorted(data)
        entry.model = data.get("model")
        entry.stream = data.get("stream")
        entry.tool_choice = data.get("tool_choice")
        tools = data.get("tools") or []
        entry.tools = [str((t.get("function") or {}).get("name") or t.get("name") or t.get("type")) for t in tools
                       if isinstance(t, dict)]
        messages = data.get("messages") or data.get("input")
        if isinstance(messages, list):
            entry.messages = len(messages)
            entry.roles = [str(m.get("role", m.get("type"))) for m in messages if isinstance(m, dict)]
            for m in messages:
                if not isinstance(m, dict):
                    continue
                if m.get("type") in ("function_call_output", "custom_tool_call_output") and m.get("call_id"):
                    entry.tool_results.append(str(m["call_id"]))  # Responses
                elif m.get("role") == "tool" and m.get("tool_call_id"):
                    entry.tool_results.append(str(m["tool_call_id"]))  # OpenAI chat
                elif isinstance(m.get("content"), list):  # Anthropic
                    entry.tool_results += [str(b.get("tool_use_id")) for b in m["content"]
                                           if isinstance(b, dict) and b.get("type") == "tool_result"]

    @staticmethod
    def _note_answer(entry: TappedRequest, text: str) -> None:
        """Finish reasons, tool calls and text of an answer in any of the chat dialects (OpenAI
        chat, Anthropic Messages, Responses), whole or streamed as SSE (kept in `events`)."""
        if "data:" in text:
            entry.events = parse_sse(text)
            docs = [ev["data"] for ev in entry.events]
        else:
            try:
                docs = [json.loads(text)]
            except ValueError:
                docs = []
            docs = [d for d in docs if isinstance(d, dict)]
        parts: list[str] = []
        partial_json: dict[Any, str] = {}  # Anthropic tool_use input, per open block
        for doc in docs:
            for choice in doc.get("choices") or []:  # OpenAI chat
                if choice.get("finish_reason"):
                    entry.finish_reasons.append(choice["finish_reason"])
                part = choice.get("message") or choice.get("delta") or {}
                if isinstance(part.get("content"), str):
                    parts.append(part["content"])
                for call in part.get("tool_calls") or []:
                    name = (call.get("function") or {}).get("name")
                    if name:
                        entry.tool_calls.append(name)
                    if call.get("id"):
                        entry.tool_call_ids.append(call["id"])
                    if (call.get("function") or {}).get("arguments"):
                        entry.tool_args.append(str(call["function"]["arguments"])[:300])
            kind = doc.get("type")
            blocks = []
            if kind == "message":  # Anthropic, whole
                blocks = doc.get("content") or []
                if doc.get("stop_reason"):
                    entry.finish_reasons.append(doc["stop_reason"])
            elif kind == "content_block_start":
                blocks = [doc.get("content_block") or {}]
            elif kind == "content_block_delta" and (doc.get("delta") or {}).get("type") == "text_delta":
                parts.append(doc["delta"].get("text") or "")
            elif kind == "content_block_delta" and (doc.get("delta") or {}).get("type") == "input_json_delta":
                partial_json[doc.get("index")] = partial_json.get(doc.get("index"), "") + (
                    doc["delta"].get("partial_json") or "")
            elif kind == "content_block_stop" and doc.get("index") in partial_json:
                entry.tool_args.append(partial_json.pop(doc.get("index"))[:300])
            elif kind == "message_delta" and (doc.get("delta") or {}).get("stop_reason"):
                entry.finish_reasons.append(doc["delta"]["stop_reason"])
            for block in blocks:
                if block.get("type") == "tool_use":
                    entry.tool_calls.append(str(block.get("name")))
                    entry.tool_call_ids.append(str(block.get("id")))
                    if kind == "message":
                        entry.tool_args.append(json.dumps(block.get("input"))[:300])
                elif block.get("type") == "text" and block.get("text"):
                    parts.append(block["text"])
            items = []
            if doc.get("object") == "response":  # Responses, whole
                items = doc.get("output") or []
                entry.finish_reasons.append(str(doc.get("status")))
            elif kind == "response.output_item.done":
                items = [doc.get("item") or {}]
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                entry.finish_reasons.append(str((doc.get("response") or {}).get("status")))
            for item in items:
                if item.get("type") in ("function_call", "custom_tool_call"):
                    name = f"{item['namespace']}.{item.get('name')}" if item.get("namespace") else item.get("name")
                    entry.tool_calls.append(str(name))
                    entry.tool_call_ids.append(str(item.get("call_id")))
                    entry.tool_args.append(str(item.get("arguments", item.get("input")))[:300])
                elif item.get("type") == "message":
                    parts += [c.get("text") or "" for c in item.get("content") or [] if isinstance(c, dict)]
        entry.text = "".join(parts)

    def with_tools(self) -> list[TappedRequest]:
        return [r for r in self.requests if r.tools]

    def failures(self) -> list[TappedRequest]:
        return [r for r in self.requests if (r.status or 0) >= 400]

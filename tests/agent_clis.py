"""Real agent CLIs (opencode, qwen-code) for end-to-end checks against a live router.

`install_cli(name)` installs a pinned npm package into the user cache (reused when present) and
returns its binary; it raises `CliUnavailable` (the test skips, saying why) when npm is missing or
the install fails. `opencode_invocation` / `qwen_invocation` write each CLI's offline configuration
into a throwaway HOME and working directory and return the argv and environment to run it with:
nothing touches the real home, and every setting that phones home is off (see
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
]
_PROTOCOL_RE = re.compile("|".join(f"(?:{p})" for p in PROTOCOL_ERROR_PATTERNS), re.IGNORECASE)


def protocol_errors(*texts: str) -> list[str]:
    """The lines of `texts` that carry a protocol-error marker (at most 20, each cut to 400 chars)."""
    hits = []
    for text in texts:
        for line in text.splitlines():
            if _PROTOCOL_RE.search(line):
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

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], "")}


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
        entry = TappedRequest(scope["method"], scope["path"])
        self.requests.append(entry)
        body = bytearray()
        error = bytearray()
        answer = bytearray()

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
            elif message["type"] == "http.response.body":
                if len(answer) < self.max_answer:
                    answer.extend(message.get("body", b""))
                if not message.get("more_body"):
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

    @staticmethod
    def _note_answer(entry: TappedRequest, text: str) -> None:
        """Finish reasons and tool-call names of a chat answer, whole or streamed as SSE."""
        docs = []
        for line in text.splitlines() if "data:" in text else [text]:
            line = line.removeprefix("data:").strip()
            if line.startswith("{"):
                try:
                    docs.append(json.loads(line))
                except ValueError:
                    pass
        for doc in docs:
            for choice in doc.get("choices") or []:
                if choice.get("finish_reason"):
                    entry.finish_reasons.append(choice["finish_reason"])
                part = choice.get("message") or choice.get("delta") or {}
                for call in part.get("tool_calls") or []:
                    name = (call.get("function") or {}).get("name")
                    if name:
                        entry.tool_calls.append(name)

    def with_tools(self) -> list[TappedRequest]:
        return [r for r in self.requests if r.tools]

    def failures(self) -> list[TappedRequest]:
        return [r for r in self.requests if (r.status or 0) >= 400]

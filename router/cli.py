"""The `route` command line: answer a prompt from the terminal, serve the router, show settings.

`route "prompt"` is the default command (see PromptDefaultGroup); the other commands are
subcommands. Heavy imports (llama.cpp, scikit-learn, FastAPI) happen inside the commands so that
`route --help` and error paths stay fast. Errors become one or two lines with the fix; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from models.labels import LABELS
from router.settings import Settings, default_config_file, load_settings, setting_sources

try:  # typer >= 0.22 vendors click; its usage errors derive from TyperException
    from typer import TyperException as CommandLineError
except ImportError:  # pragma: no cover - older typer on click
    from click import ClickException as CommandLineError

if TYPE_CHECKING:  # the catalog loads lazily: `route --help` stays fast
    from models.catalog import ModelSpec

DEFAULT_COMMAND = "ask"
CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
PROBE_TIMEOUT_S = 0.3


def stderr_console() -> Console:
    """Decisions, progress and errors go to stderr so that stdout holds only the answer."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- default command


class PromptDefaultGroup(TyperGroup):
    """A group whose unknown first argument is a prompt: `route "fix this"` == `route ask "fix this"`.

    It also accepts `--debug` anywhere, and turns every error a command raises into a short
    message with the fix (the traceback only with `--debug`).
    """

    GROUP_FLAGS = ("--install-completion", "--show-completion", "--help", "-h")

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        args = list(args)
        if "--debug" in args[: args.index("--") if "--" in args else len(args)]:
            args.remove("--debug")
            ctx.meta["route.debug"] = True
        first = args[0] if args else None
        if first is None:
            if not _stdin_is_terminal():
                args = [DEFAULT_COMMAND]
        elif first not in self.commands and first not in self.GROUP_FLAGS:
            args = [DEFAULT_COMMAND, *args]
        if ctx.meta.get("route.debug"):
            args = ["--debug", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, CommandLineError):
            raise
        except KeyboardInterrupt:
            stderr_console().print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # `route "..." | head`: the reader has what it wanted; say nothing and stop writing.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise typer.Exit(0) from None
        except Exception as exc:  # noqa: BLE001 - the one place every error is turned into a message
            console = stderr_console()
            if ctx.meta.get("route.debug"):
                console.print(escape("".join(traceback.format_exception(exc))), end="")
            message, hint = describe_error(exc)
            console.print(f"[bold red]error:[/] {escape(message)}")
            if hint:
                console.print(f"[dim]{escape(hint)}[/]")
            raise typer.Exit(1) from None


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


app = typer.Typer(
    cls=PromptDefaultGroup,
    name="route",
    help=(
        "A local inference router: classifies each prompt (code_edit, fim, chat, instruct) and answers "
        "it with the matching GGUF model.\n\n"
        'Ask:    route "write a python function that reverses a string"\n\n'
        'Pipe:   cat file.py | route "add type hints"\n\n'
        "Serve:  route serve   (OpenAI, llama.cpp /infill and Ollama APIs on http://127.0.0.1:8012)"
    ),
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (accepted anywhere)."),
) -> None:
    """A local inference router."""


# --------------------------------------------------------------------------- errors


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """One line saying what went wrong and one saying what to do about it."""
    from models import errors

    hints: dict[type, str] = {
        errors.ModelNotFound: "Use auto, a label (code_edit, fim, chat, instruct) or an id from `route models list`.",
        errors.ModelLoadFailed: "Check the GGUF file, or fetch it again with `route models pull ID`.",
        errors.ContextLengthExceeded: "Shorten the prompt or lower --max-tokens.",
        errors.Overloaded: "The model's queue is full; retry in a moment.",
        errors.UpstreamUnavailable: "Check that the upstream servers named in the catalog are running.",
        errors.Unauthorized: "Set ROUTE_API_KEY (or api_key in the config file) to the router's key.",
        errors.FimNotSupported: "Pick a model with FIM tokens for fim requests.",
    }
    if isinstance(exc, errors.RouterError):
        for cls, hint in hints.items():
            if isinstance(exc, cls):
                return exc.message, hint
        return exc.message, None
    kind = type(exc).__name__
    module = type(exc).__module__
    if kind == "ArtifactError" and module.startswith("classifier"):
        return str(exc), "Rebuild it with `route train`, or unset classifier_artifact (`route config` shows it)."
    if module.split(".")[0] in ("models", "classifier", "router"):
        return str(exc), None  # our own errors are written for people already
    if kind == "ValidationError":
        return _describe_validation_error(exc), "`route config` shows every setting and where it came from."
    try:
        import httpx

        if isinstance(exc, httpx.HTTPError):
            where = getattr(getattr(exc, "request", None), "url", "the router")
            return (
                f"cannot reach the router at {where}: {exc or kind}",
                "Start it with `route serve`, or drop --server to answer in-process.",
            )
    except (ImportError, RuntimeError):
        pass
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or kind}: {exc.filename}", None
    if kind in ("YAMLError", "ScannerError", "ParserError") or module.startswith("yaml"):
        return f"cannot read YAML: {exc}", None
    return f"{kind}: {exc}", "Run again with --debug for the traceback."


def _describe_validation_error(exc: Any) -> str:
    try:
        problems = exc.errors()
    except (AttributeError, TypeError):
        return str(exc)
    sources: dict[str, str] = {}
    try:
        sources = setting_sources()
    except Exception:  # noqa: BLE001 - the sources only decorate the message
        pass
    parts = []
    for problem in problems[:3]:
        loc = ".".join(str(p) for p in problem.get("loc", ())) or "value"
        where = sources.get(str(problem.get("loc", ("",))[0]))
        suffix = f" (from {where})" if where and where != "default" else ""
        if problem.get("type") == "extra_forbidden":
            parts.append(f"unknown setting '{loc}'{suffix or ' (config file ' + str(default_config_file()) + ')'}")
        else:
            parts.append(f"invalid setting '{loc}'{suffix}: {problem.get('msg')}")
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(parts) + more


# --------------------------------------------------------------------------- answering a prompt


@dataclass
class Answer:
    """What `route "prompt"` produced: the decision, the text and what it cost (also the --json shape)."""

    label: str
    model: str
    confidence: float | None  # None: the server did not say (not a router of ours)
    reasons: list[str] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    via: str = "in-process"
    seconds: float = 0.0


def compose_prompt(words: list[str] | None, stdin_text: str | None) -> str:
    """The prompt from the arguments and piped stdin: the instruction first, then the piped text."""
    prompt = " ".join(words or []).strip()
    piped = (stdin_text or "").strip("\n")
    if prompt and piped.strip():
        return f"{prompt}\n\n{piped}"
    return prompt or piped


def read_piped_stdin() -> str | None:
    """Piped input, or None when stdin is a terminal (never block waiting for a human)."""
    if _stdin_is_terminal():
        return None
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            return None  # a socket or device an IDE left open: reading it could block forever
    except (OSError, ValueError, AttributeError):
        pass  # an in-memory stream (tests, embedding): read it
    try:
        return sys.stdin.read()
    except (OSError, ValueError):
        return None


def build_catalog(settings: Settings):
    """The catalog the settings describe (the server's own rule: catalog file, --model files, profile)."""
    from router.app import build_catalog as server_catalog

    return server_catalog(settings)


def load_classifier(settings: Settings, console: Console):
    """The shipped (or configured) classifier; shape rules only if it cannot load, said loudly."""
    from router.app import build_classifier

    classifier, warning = build_classifier(settings)
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    return classifier


def probe_router(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a router answers GET /health at url (a fast check, so a missing one costs little)."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def local_router_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def sampling_fields(max_tokens: int | None, temperature: float | None, seed: int | None) -> dict[str, Any]:
    """The sampling knobs the user set (the rest stay at the backend's defaults)."""
    given = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    return {k: v for k, v in given.items() if v is not None}


def request_body(prompt: str, raw: bool, model: str | None, sampling: dict[str, Any]) -> tuple[str, dict]:
    """The OpenAI request this prompt is: chat by default, a raw completion with --raw."""
    body: dict[str, Any] = {"model": model or "auto", **sampling}
    if raw:
        body["prompt"] = prompt
        return COMPLETIONS_ENDPOINT, body
    body["messages"] = [{"role": "user", "content": prompt}]
    return CHAT_ENDPOINT, body


def answer_in_process(
    settings: Settings, prompt: str, model: str | None, raw: bool, sampling: dict[str, Any], console: Console,
    on_decision, on_text,
) -> Answer:
    """Classify, route, load (fetching weights on first use) and generate, all in this process."""
    from models.errors import RouterError
    from models.events import Finish, TextDelta
    from router.app import build_pool
    from router.dialects.endpoints import parse_request
    from router.routing import Router

    catalog = build_catalog(settings)
    classifier = load_classifier(settings, console)
    pool = build_pool(settings, catalog)
    try:
        request = parse_request(*request_body(prompt, raw, model, sampling))  # exactly what `--server` would send
        route = Router(catalog, classifier, pool, settings.model_aliases).route(request)
        answer = Answer(label=route.label, model=route.model_id, confidence=route.confidence, reasons=list(route.reasons))
        on_decision(answer)
        ensure_weights(catalog.get(route.model_id), console)
        generation = pool.submit(route.model_id, request)
        try:
            for event in _with_load_status(iter(generation), console, route.model_id):
                if isinstance(event, TextDelta):
                    answer.text += event.text
                    on_text(event.text)
                elif isinstance(event, Finish):
                    answer.finish_reason = event.reason
                    u = event.usage
                    answer.usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
                    if event.reason == "error":
                        raise RouterError(f"generation failed: {event.error}")
        except BaseException:
            generation.cancel()
            raise
        return answer
    finally:
        pool.close()


def ensure_weights(spec: ModelSpec | None, console: Console) -> None:
    """Fetch Hugging Face weights before loading, with a progress bar when stderr is a terminal."""
    from models import fetch
    from models.catalog import HFSource

    if spec is None or not isinstance(spec.source, HFSource):
        return

    if not fetch.is_cached(spec):
        console.print(f"fetching weights for {spec.id} (first use)...")
    fetch.resolve_weights(spec, download=True, progress=console.is_terminal)


def _with_load_status(events: Iterator, console: Console, model_id: str) -> Iterator:
    """A spinner while the model loads and reads the prompt (until its first event), if stderr is a terminal."""
    if console.is_terminal:
        with console.status(f"loading {model_id}...", spinner="dots"):
            first = next(events, None)
    else:
        first = next(events, None)
    if first is None:
        return
    yield first
    yield from events


def answer_over_http(
    url: str, settings: Settings, prompt: str, model: str | None, raw: bool, sampling: dict[str, Any],
    on_decision, on_text,
) -> Answer:
    """Send the prompt to a running router (OpenAI API, streamed) and read its routing headers back."""
    import httpx

    endpoint, body = request_body(prompt, raw, model, sampling)
    body.update(stream=True, stream_options={"include_usage": True})
    headers = {"Accept": "text/event-stream"}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    timeout = httpx.Timeout(settings.first_token_timeout_s, connect=settings.connect_timeout_s)
    with httpx.Client(timeout=timeout) as client:
        with client.stream("POST", url.rstrip("/") + endpoint, json=body, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            answer = Answer(
                label=response.headers.get("x-route-label", "?"),
                model=response.headers.get("x-route-model", "?"),
                confidence=_header_float(response.headers.get("x-route-confidence")),
                via=url,
            )
            on_decision(answer)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise error_from_payload(chunk, response.status_code)
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if not raw else choice.get("text")
                    if piece:
                        answer.text += piece
                        on_text(piece)
                    if choice.get("finish_reason"):
                        answer.finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    answer.usage = {
                        "prompt_tokens": usage.get("prompt_tokens", 0),
                        "completion_tokens": usage.get("completion_tokens", 0),
                    }
    return answer


def _header_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: Any) -> Exception:
    """The router's OpenAI-shaped error as the same RouterError the in-process path raises."""
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"message": response.text.strip() or f"HTTP {response.status_code}"}}
    return error_from_payload(payload, response.status_code)


def error_from_payload(payload: dict, status: int) -> Exception:
    from models import errors

    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message, code = str(error.get("message") or "request failed"), error.get("code")
    else:
        message, code = str(error or payload), None
    by_code: dict[str, type] = {}
    pending: list[type] = [errors.RouterError]
    while pending:
        cls = pending.pop()
        by_code.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    cls = by_code.get(str(code), errors.RouterError)
    exc = cls(f"{message} (HTTP {status})")
    return exc


@app.command(
    DEFAULT_COMMAND,
    short_help='Answer a prompt (the default: route "prompt").',
    help=(
        'Answer a prompt (the default command: `route "prompt"` is `route ask "prompt"`). Streams the '
        "answer to stdout and the routing decision to stderr. Piped stdin is appended to the prompt."
    ),
)
def ask(
    prompt: Optional[list[str]] = typer.Argument(None, help="The prompt (several words are joined)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Force a label (code_edit, fim, chat, instruct) or a model id; default: auto."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (decision, text, usage) instead."),
    server: Optional[str] = typer.Option(
        None, "--server", help="Send the prompt to a running router at this URL (ROUTE_SERVER_URL)."
    ),
    local: bool = typer.Option(
        False, "--local", help="Answer in-process even if a router is listening on the configured address."
    ),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as a raw completion (continue the text)."),
    max_tokens: Optional[int] = typer.Option(1024, "--max-tokens", min=1, help="Most tokens to generate."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", min=0.0, help="Sampling temperature."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    profile: Optional[str] = typer.Option(None, "--profile", help="In-process: a built-in model profile (starter, laptop)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="In-process: a YAML model catalog."),
    ctx_size: Optional[int] = typer.Option(
        None, "--ctx-size", "-c", min=1, help="In-process: context tokens of every local model (ROUTE_N_CTX)."
    ),
) -> None:
    console = stderr_console()
    text = compose_prompt(prompt, read_piped_stdin())
    if not text.strip():
        raise typer.BadParameter('no prompt given: route "your prompt", or pipe text into route.', param_hint="PROMPT")
    if model is not None and not model.strip():
        raise typer.BadParameter("must be auto, a label or a model id, not empty.", param_hint="--model")
    if server and local:
        raise typer.BadParameter("--server and --local contradict each other; pick one.", param_hint="--local")
    settings = load_settings(server_url=server, profile=profile, catalog=catalog, n_ctx=ctx_size)
    sampling = sampling_fields(max_tokens, temperature, seed)

    def on_decision(answer: Answer) -> None:
        if as_json:
            return
        via = "" if answer.via == "in-process" else f" via {answer.via}"
        confidence = "?" if answer.confidence is None else f"{answer.confidence:.2f}"
        console.print(
            f"[dim]→ {escape(answer.label)} · {escape(answer.model)} · confidence {confidence}{escape(via)}[/]"
        )

    def on_text(piece: str) -> None:
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()

    url = settings.server_url
    if url is None and not local:
        candidate = local_router_url(settings)
        if probe_router(candidate):
            url = candidate
    started = time.perf_counter()
    if url is not None:
        answer = answer_over_http(url, settings, text, model, raw, sampling, on_decision, on_text)
    else:
        answer = answer_in_process(settings, text, model, raw, sampling, console, on_decision, on_text)
    answer.seconds = round(time.perf_counter() - started, 3)
    if as_json:
        sys.stdout.write(json.dumps(asdict(answer), ensure_ascii=False) + "\n")
        return
    if not answer.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if console.is_terminal:
        tokens = answer.usage.get("completion_tokens", 0)
        console.print(f"[dim]{tokens} tokens in {answer.seconds:.1f}s ({answer.finish_reason})[/]")


# --------------------------------------------------------------------------- serve


def is_gguf(path: Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def parse_model_files(values: list[str] | None) -> dict[str, Path]:
    """`--model LABEL=PATH.gguf` (repeatable) into {label: path}, refusing bad syntax and missing files."""
    files: dict[str, Path] = {}
    for value in values or []:
        label, sep, path = value.partition("=")
        label, path = label.strip(), path.strip()
        if not sep or not label or not path:
            raise typer.BadParameter(f"'{value}' is not LABEL=PATH.gguf (e.g. code_edit=./coder.gguf).", param_hint="--model")
        if label not in LABELS:
            raise typer.BadParameter(f"unknown label '{label}'; labels are {', '.join(LABELS)}.", param_hint="--model")
        if label in files:
            raise typer.BadParameter(f"label '{label}' given twice.", param_hint="--model")
        file = Path(path).expanduser()
        if not file.is_file():
            raise typer.BadParameter(f"no such file: {file}", param_hint="--model")
        if not is_gguf(file):  # e.g. --model fim=../../etc/passwd: never handed to llama.cpp
            raise typer.BadParameter(f"{file} is not a GGUF model file (it does not start with GGUF).", param_hint="--model")
        files[label] = file.absolute()  # not resolve(): an HF cache snapshot link keeps its file name as the model id
    return files


@app.command(
    short_help="Serve the OpenAI, llama.cpp and Ollama APIs on one port.",
    help="Serve the router: OpenAI, llama.cpp (/infill) and Ollama APIs on one port (default 127.0.0.1:8012).",
)
def serve(
    model: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="LABEL=PATH.gguf, repeatable: serve local files with no catalog."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "--catalog", help="A YAML model catalog."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Built-in model profile (starter, ...)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default 8012, the llama.vim default)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require `Authorization: Bearer KEY`."),
    ctx_size: Optional[int] = typer.Option(
        None, "--ctx-size", "-c", min=1,
        help="Context tokens of every local model (ROUTE_N_CTX; default: each model's trained context, "
        "capped so its KV cache fits the memory budget).",
    ),
) -> None:
    files = parse_model_files(model)
    if config is not None and not config.is_file():
        raise typer.BadParameter(f"no such file: {config}", param_hint="--config")
    settings = load_settings(
        host=host, port=port, api_key=api_key, catalog=config, profile=profile, models=files or None, n_ctx=ctx_size
    )
    import uvicorn

    from router.app import create_app
    from router.state import app_state

    application = create_app(settings)
    console = stderr_console()
    for spec in app_state(application).catalog.models:
        labels = ", ".join(spec.labels) or "no label"
        console.print(f"[dim]{escape(spec.id)}: {escape(labels)}[/]")
    console.print(f"route: listening on {local_router_url(settings)} (OpenAI /v1, llama.cpp /infill, Ollama /api)")
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                log_config=server_log_config(settings.log_level))


def server_log_config(level: str) -> dict:
    """uvicorn's logging, with the router's own loggers (decisions, prefill progress, warnings) beside it."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("router", "models"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


# --------------------------------------------------------------------------- config


@app.command(
    "config",
    short_help="Show the effective settings and where each came from.",
    help="Print the effective settings and where each came from (flag, env ROUTE_*, config file, default).",
)
def show_config(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    host: Optional[str] = typer.Option(None, "--host", help="As `route serve --host` would set it."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="As `route serve --port` would set it."),
    profile: Optional[str] = typer.Option(None, "--profile", help="As `--profile` would set it."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="As `--catalog` would set it."),
) -> None:
    flags = {"host": host, "port": port, "profile": profile, "catalog": catalog}
    settings = load_settings(**flags)
    sources = setting_sources(**flags)
    values = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "api_key" and value is not None:
            value = "********"
        values[name] = value
    config_file = default_config_file()
    if as_json:
        payload = {
            "config_file": str(config_file),
            "config_file_exists": config_file.is_file(),
            "settings": {n: {"value": values[n], "source": sources[n]} for n in values},
        }
        sys.stdout.write(json.dumps(payload, default=str, indent=2) + "\n")
        return
    out = Console(highlight=False, soft_wrap=True)
    state = "found" if config_file.is_file() else "not found"
    out.print(f"config file: {escape(str(config_file))} ({state}; ROUTE_CONFIG_FILE points elsewhere)")
    table = Table("setting", "value", "source", box=None, pad_edge=False)
    for name, value in values.items():
        table.add_row(name, escape(_format_value(value)), escape(sources[name]))
    out.print(table)


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "{}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "[]"
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- other owners' commands


def loaded_models_from_router(settings: Settings) -> set[str] | None:
    """Ids loaded in the router listening at the configured address (Ollama's /api/ps), None if none answers."""
    import httpx

    url = settings.server_url or local_router_url(settings)
    if not probe_router(url):
        return None
    headers = {}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    try:
        response = httpx.get(url.rstrip("/") + "/api/ps", headers=headers, timeout=2.0)
        response.raise_for_status()
        return {str(m.get("model") or m.get("name")) for m in response.json().get("models", [])}
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def register_optional_commands(application: typer.Typer) -> None:
    """Add the classifier's, the catalog's and the engine's commands (their own modules) when installed."""
    for module_name in ("router.cli_classifier", "router.cli_models", "router.cli_engine"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        if module_name == "router.cli_models":
            module.register(application, loaded_models=loaded_models_from_router)
        else:
            module.register(application)


register_optional_commands(app)


def main() -> None:
    """Console-script entry point `route`."""
    app()


if __name__ == "__main__":
    main()

"""The classifier's commands: `route classify`, `route explain`, `route eval`, `route train`.

`register(app)` adds them to the main `route` app (router/cli.py calls it). Errors are one clear
line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # loaded lazily, so `route --help` stays fast
    from classifier import Classifier, Decision
    from classifier.evaluate import EvalReport
    from models.request import Request

DEFAULT_ENDPOINT = "/v1/chat/completions"
ARTIFACT_HELP = "A classifier .skops artifact instead of the shipped one (also ROUTE_CLASSIFIER_ARTIFACT)."


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _fail(err: Console, message: str, hint: str | None = None) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]{hint}[/]", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _artifact_from_settings() -> Path | None:
    """The configured artifact (flag > ROUTE_* env > config file), None for the shipped one."""
    try:
        from router.settings import load_settings

        return load_settings().classifier_artifact
    except Exception:  # a broken config is `route config`'s to report; classify still works
        return None


def _load_classifier(artifact: Path | None, shape_only: bool):
    from classifier import Classifier

    if shape_only:
        return Classifier.shape_only()
    return Classifier.load(artifact or _artifact_from_settings())


def _read_request(prompt: str | None, request: Path | None, endpoint: str) -> Request:
    """The request to classify, parsed by the router's own adapter for its endpoint."""
    from models.errors import RouterError
    from router.dialects.endpoints import parse_request

    if request is not None and prompt is not None:
        raise CliError("give either a PROMPT or --request FILE, not both")
    if request is None:
        if prompt is None:
            raise CliError('nothing to classify: give a PROMPT ("...") or --request FILE.json')
        if endpoint in ("/v1/chat/completions", "/api/chat"):
            body: Any = {"messages": [{"role": "user", "content": prompt}]}
        else:
            body = {"prompt": prompt}
    else:
        try:
            data = json.loads(Path(request).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CliError(f"request file not found: {request}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {request}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise CliError(f"{request} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if not isinstance(data, dict) or not isinstance(data.get("endpoint"), str) or "body" not in data:
            raise CliError(f'{request} must be a JSON object {{"endpoint": "/v1/...", "body": {{...}}}}')
        endpoint, body = data["endpoint"], data["body"]
    try:
        return parse_request(endpoint, body)
    except RouterError as exc:
        raise CliError(f"invalid request for {endpoint}: {exc.message}") from None


def _decide(prompt, request, endpoint, artifact, shape_only) -> tuple[Classifier, Decision, Request]:
    """(classifier, decision, request): the request is parsed once and handed back for explaining."""
    from classifier import ArtifactError, InvalidRequestShape

    parsed = _read_request(prompt, request, endpoint)
    try:
        classifier = _load_classifier(artifact, shape_only)
        return classifier, classifier.classify(parsed), parsed
    except InvalidRequestShape as exc:
        raise CliError(f"invalid request for {parsed.endpoint}: {exc}") from None
    except ArtifactError as exc:
        raise CliError(f"{exc}") from None


PROMPT_HELP = "The prompt to classify (sent as one user message)."
REQUEST_HELP = 'A JSON file {"endpoint": ..., "body": {...}}.'
ENDPOINT_HELP = "Endpoint a plain PROMPT is sent to."
SHAPE_ONLY_HELP = "Use the shape rules only, no text model."


def classify_command(
    prompt: Optional[str] = typer.Argument(None, help=PROMPT_HELP),
    request: Optional[Path] = typer.Option(None, "--request", "-r", help=REQUEST_HELP),
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, "--endpoint", help=ENDPOINT_HELP),
    artifact: Optional[Path] = typer.Option(None, "--artifact", envvar="ROUTE_CLASSIFIER_ARTIFACT", help=ARTIFACT_HELP),
    shape_only: bool = typer.Option(False, "--shape-only", help=SHAPE_ONLY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as one JSON object."),
) -> None:
    """Print the label the router would pick for a prompt or a request."""
    out, err = Console(), Console(stderr=True)
    try:
        _, decision, _ = _decide(prompt, request, endpoint, artifact, shape_only)
    except CliError as exc:
        raise _fail(err, str(exc), "`route classify --help` shows the options.")
    if as_json:
        print(json.dumps(decision.as_dict()))
        return
    out.print(f"[bold]{decision.label.value}[/]  confidence {decision.confidence:.2f}", highlight=False)
    if decision.reasons:
        out.print(f"[dim]{decision.reasons[0]}[/]", highlight=False, soft_wrap=True)


def explain_command(
    prompt: Optional[str] = typer.Argument(None, help="The prompt to explain (sent as one user message)."),
    request: Optional[Path] = typer.Option(None, "--request", "-r", help=REQUEST_HELP),
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, "--endpoint", help=ENDPOINT_HELP),
    artifact: Optional[Path] = typer.Option(None, "--artifact", envvar="ROUTE_CLASSIFIER_ARTIFACT", help=ARTIFACT_HELP),
    shape_only: bool = typer.Option(False, "--shape-only", help=SHAPE_ONLY_HELP),
) -> None:
    """Like classify, with every reason: the shape rule that fired or the weighted text features."""
    from classifier.request_view import read_request

    out, err = Console(), Console(stderr=True)
    try:
        classifier, decision, parsed = _decide(prompt, request, endpoint, artifact, shape_only)
    except CliError as exc:
        raise _fail(err, str(exc), "`route explain --help` shows the options.")
    view = read_request(parsed)
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("label", f"[bold]{decision.label.value}[/]")
    table.add_row("confidence", f"{decision.confidence:.3f}")
    table.add_row("endpoint", parsed.endpoint)
    table.add_row("classifier", classifier.mode)
    table.add_row("text read", f"{view.chars_read:,} characters (bounded)")
    out.print(table)
    out.print("[bold]reasons[/]")
    for reason in decision.reasons:
        out.print(f"  • {reason}", highlight=False, soft_wrap=True)


def eval_command(
    file: Path = typer.Argument(..., help='JSONL, one {"endpoint", "body", "label"} a line.'),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    artifact: Optional[Path] = typer.Option(None, "--artifact", envvar="ROUTE_CLASSIFIER_ARTIFACT", help=ARTIFACT_HELP),
    shape_only: bool = typer.Option(False, "--shape-only", help="Evaluate the shape rules only, no text model."),
) -> None:
    """Score the classifier on labelled requests: P/R/F1, macro-F1, confusion, latency."""
    from classifier import ArtifactError
    from classifier.evaluate import evaluate_file
    from router.dialects.endpoints import parse_request

    out, err = Console(), Console(stderr=True)
    if not file.is_file():
        raise _fail(err, f"eval file not found: {file}")
    try:
        report = evaluate_file(_load_classifier(artifact, shape_only), file, parse_request)
    except ArtifactError as exc:
        raise _fail(err, str(exc), "Rebuild it with `route train`.")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(err, f"cannot read {file}: {exc}")
    for line, why in report.skipped:
        err.print(f"[yellow]skipped line {line}:[/] {why}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    if report.n == 0:
        raise _fail(err, f"no readable lines in {file}")
    _print_report(out, report)


def train_command(
    out_path: Optional[Path] = typer.Option(None, "--out", help="Where to write the artifact (default: the shipped one)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same data + seed gives the same model."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training JSONL (default: the shipped classifier/data/train.jsonl)."),
    dev: Optional[Path] = typer.Option(None, "--dev", help="Held-out eval JSONL (default: the shipped dev set)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress display."),
) -> None:
    """Rebuild the classifier's text model from its training data, reproducibly."""
    from classifier import ArtifactError, InvalidRequestShape
    from classifier.model import DEFAULT_ARTIFACT
    from classifier.train import DEV_FILE, TRAIN_FILE, train
    from models.errors import RouterError
    from router.dialects.endpoints import parse_request

    out, err = Console(), Console(stderr=True)
    data_path, dev_path = data or TRAIN_FILE, dev or DEV_FILE
    if not data_path.is_file():
        raise _fail(err, f"training data not found: {data_path}")
    try:
        result = train(parse_request, out_path or DEFAULT_ARTIFACT, data_path, dev_path, seed=seed, progress=progress,
                       console=err)
    except (InvalidRequestShape, ArtifactError, RouterError, ValueError, KeyError, OSError) as exc:
        raise _fail(err, f"training failed: {exc}")
    out.print(
        f"wrote [bold]{result.artifact}[/] ({result.artifact.stat().st_size / 1e6:.2f} MB): "
        f"{result.n_train:,} rows, {result.n_features:,} features, seed {seed}",
        highlight=False,
    )
    if result.dev is not None:
        out.print(f"held-out dev ({result.dev.n:,} requests): macro-F1 {result.dev.macro_f1:.4f}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add classify / explain / eval / train to `app`."""
    app.command("classify")(classify_command)
    app.command("explain")(explain_command)
    app.command("eval")(eval_command)
    app.command("train")(train_command)


def _print_report(out: Console, report: EvalReport) -> None:
    table = Table(title=f"classifier on {report.n:,} requests")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, m in report.per_label.items():
        table.add_row(label, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", f"{m['support']:,}")
    table.add_section()
    table.add_row("[bold]macro[/]", "", "", f"[bold]{report.macro_f1:.4f}[/]", f"{report.n:,}")
    out.print(table)
    labels = report.confusion["labels"]
    confusion = Table(title="confusion (rows: true, columns: predicted)")
    confusion.add_column("true \\ predicted")
    for label in labels:
        confusion.add_column(label, justify="right")
    for label, row in zip(labels, report.confusion["matrix"]):
        confusion.add_row(label, *(f"{v:,}" for v in row))
    out.print(confusion)
    out.print(
        f"latency per request (warm, in-process): p50 {report.latency_ms['p50']:.3f} ms, "
        f"p99 {report.latency_ms['p99']:.3f} ms  (CPU time: p50 {report.cpu_ms.get('p50', 0):.3f} ms, "
        f"p99 {report.cpu_ms.get('p99', 0):.3f} ms)",
        highlight=False,
    )
    if report.skipped:
        out.print(f"[yellow]{len(report.skipped)} line(s) skipped[/]", highlight=False)

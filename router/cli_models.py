"""`route models list | pull | rm`: the catalog's models and their weights in the HF cache.

The work is done by models.fetch; this module only parses arguments and prints. Status and
progress go to stderr, so `route models pull ID` prints nothing but the weights' path on
stdout (usable in scripts). Errors are raised and rendered by router.cli's error handler.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Returns the ids of the models loaded in a running router, or None when none answers.
LoadedModels = Callable[[object], "set[str] | None"]


def human_size(n: int | None) -> str:
    """Bytes as people read them (decimal units, like the Hub and pip show sizes)."""
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _settings(profile: str | None, catalog: Path | None):
    from router.settings import load_settings

    return load_settings(profile=profile, catalog=catalog)


def _catalog(settings):
    # models.catalog's rule directly: importing the server (router.app) would cost seconds here.
    from models.catalog import select_catalog

    return select_catalog(catalog=settings.catalog, models=dict(settings.models), profile=settings.profile)


def _find(model: str, catalog):
    """A model by id or label in the effective catalog, else by id in any built-in profile."""
    from models.catalog import builtin_profile, profile_names
    from models.errors import ModelNotFound

    spec = catalog.get(model) or catalog.for_label(model)
    if spec is not None:
        return spec
    for name in profile_names():
        spec = builtin_profile(name).get(model)
        if spec is not None:
            return spec
    known = ", ".join(catalog.ids()) or "none"
    raise ModelNotFound(f"no model {model!r} in the catalog (models: {known}) nor in any built-in profile")


def register(app: typer.Typer, *, loaded_models: LoadedModels | None = None) -> None:
    """Add the `models` sub-app. `loaded_models(settings)`, when given, fills a LOADED column
    from a running router (the CLI owner decides how to ask it)."""
    models_app = typer.Typer(
        name="models", help="List, download and delete model weights (standard Hugging Face cache).",
        no_args_is_help=True, rich_markup_mode=None,
    )

    @models_app.command("list", help="The catalog's models: labels, size, and whether the weights are here.")
    def list_command(
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="A built-in profile (starter, laptop)."),
        catalog: Optional[Path] = typer.Option(None, "--catalog", "--config", help="A YAML model catalog."),
        as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout."),
    ) -> None:
        from models.fetch import hub_cache_dir, list_models

        settings = _settings(profile, catalog)
        loaded = loaded_models(settings) if loaded_models is not None else None
        rows = list_models(_catalog(settings), loaded=loaded)
        if as_json:
            typer.echo(json.dumps([
                {
                    "id": r.id, "labels": list(r.labels), "kind": r.kind, "size_bytes": r.size_bytes,
                    "cached": r.cached, "loaded": r.loaded, "location": r.location, "description": r.description,
                }
                for r in rows
            ], indent=2))
            return
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("ID", "LABELS", "SIZE", "CACHED", *(["LOADED"] if loaded is not None else []), "SOURCE"):
            table.add_column(column, justify="right" if column == "SIZE" else "left")
        yes_no = {True: "yes", False: "no", None: "-"}
        for r in rows:
            cells = [r.id, ",".join(r.labels) or "-", human_size(r.size_bytes), yes_no[r.cached]]
            if loaded is not None:
                cells.append(yes_no[r.loaded])
            cells.append(f"{r.kind}: {r.location}")
            table.add_row(*(escape(c) for c in cells))
        out = Console(highlight=False)
        if not out.is_terminal:  # piped or captured: one line per model, never wrapped
            out = Console(highlight=False, width=400)
        out.print(table)
        _stderr().print(f"[dim]HF cache: {escape(str(hub_cache_dir()))}[/dim]")

    @models_app.command("pull", help="Download (or re-verify) weights: one model by id or label, or a whole profile.")
    def pull_command(
        model: Optional[str] = typer.Argument(None, help="A model id or label; omit to pull the whole catalog."),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="A built-in profile (starter, laptop)."),
        catalog: Optional[Path] = typer.Option(None, "--catalog", "--config", help="A YAML model catalog."),
    ) -> None:
        from models import fetch

        err = _stderr()
        effective = _catalog(_settings(profile, catalog))
        specs = [_find(model, effective)] if model else list(effective.models)
        for spec in specs:
            if spec.source.kind == "upstream":
                err.print(f"{escape(spec.id)}: served by an upstream server, nothing to download")
                continue
            started = time.perf_counter()
            was_cached = fetch.is_cached(spec)
            path = fetch.pull(spec, progress=err.is_terminal)
            took = time.perf_counter() - started
            verb = "verified" if was_cached else "pulled"
            err.print(f"[green]{verb}[/] {escape(spec.id)} ({human_size(spec.weights_bytes)}) in {took:.1f}s")
            typer.echo(str(path))

    @models_app.command("rm", help="Delete a model's weights from the Hugging Face cache.")
    def rm_command(
        model: str = typer.Argument(..., help="A model id or label."),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="A built-in profile (starter, laptop)."),
        catalog: Optional[Path] = typer.Option(None, "--catalog", "--config", help="A YAML model catalog."),
    ) -> None:
        from models import fetch

        err = _stderr()
        spec = _find(model, _catalog(_settings(profile, catalog)))
        if spec.source.kind != "hf":
            err.print(f"{escape(spec.id)}: a {spec.source.kind} model; route only deletes what it downloaded")
            raise typer.Exit(1)
        if fetch.remove(spec):
            err.print(f"removed {escape(spec.id)} ({human_size(spec.weights_bytes)})")
        else:
            err.print(f"{escape(spec.id)} is not in the cache: nothing to remove")

    app.add_typer(models_app, name="models")

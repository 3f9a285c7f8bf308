"""What a model can do and is: FIM, tool calls, context size, architecture. One owner, asked by routing and the dialects.

Before a model is loaded only the catalog (a `fim_family` override, an upstream's declared family)
and a GGUF header already on disk can tell: unknown stays None. Once loaded, the backend reports what its GGUF really holds, and the
pool keeps that (models/pool.py `Pool.capabilities`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from models.catalog import ModelSpec, UpstreamSource
from models.context_size import declared_n_ctx
from models.fim import family_tokens
from models.gguf_header import GGUFError, read_metadata
from models.tool_formats import detect_tool_format


@dataclass(frozen=True, slots=True)
class Capabilities:
    n_ctx: int  # the context the model runs with
    fim: bool | None = None  # FIM tokens in the vocabulary (None: not known before loading)
    fim_family: str | None = None  # the FIM family, where known
    fim_stops: tuple[str, ...] = ()  # the tokens a FIM generation stops on (models/fim.py FimTokens.stops)
    tools: bool | None = None  # its chat template renders tools (None: not known before loading)
    tool_format: str | None = None  # how it writes calls (models/tool_formats.py), where known
    architecture: str | None = None  # the GGUF's `general.architecture` (qwen2, llama...), where known


def declared(spec: ModelSpec, *, budget_bytes: int | None = None, n_ctx: int | None = None) -> Capabilities:
    """What the catalog (and a GGUF header already on disk) says about `spec`, before it is loaded.

    `budget_bytes` and `n_ctx` (the `--ctx-size` override) are the pool's, so the context reported
    here is the one the load will use (models/context_size.py)."""
    family = spec.fim_family
    if family is None and isinstance(spec.source, UpstreamSource):
        family = spec.source.fim_family
    size = declared_n_ctx(spec, budget_bytes, n_ctx)
    header = on_disk_header(spec)
    tool_format = declared_tool_format(spec, header)
    architecture = header.get("general.architecture") if header else None
    return Capabilities(size, fim=True if family else None, fim_family=family, fim_stops=family_stops(family),
                        tools=None if tool_format is None else bool(tool_format),
                        tool_format=tool_format or None,
                        architecture=architecture if isinstance(architecture, str) else None)


def family_stops(family: str | None) -> tuple[str, ...]:
    """A FIM family's stop tokens as its canonical spellings (a vocabulary we have not read yet)."""
    if family is None:
        return ()
    try:
        return family_tokens(family).stops
    except ValueError:  # an unknown family name: its load says so
        return ()


def declared_tool_format(spec: ModelSpec, header: dict[str, object] | None) -> str | None:
    """The call syntax of `spec`'s template before loading: a family name, "" (no tools), None (unknown:
    an upstream decides for itself, or the weights are not on disk yet)."""
    if isinstance(spec.source, UpstreamSource):
        return None
    template = spec.chat_template
    if template is None:
        if header is None:
            return None
        found = header.get("tokenizer.chat_template", "")
        template = found if isinstance(found, str) else ""
    fmt = detect_tool_format(template)
    return fmt.name if fmt else ""


HEADER_KEYS = frozenset({"tokenizer.chat_template", "general.architecture"})


def on_disk_header(spec: ModelSpec) -> dict[str, object] | None:
    """The HEADER_KEYS values of `spec`'s GGUF when the file is already on disk (None: not there or unreadable)."""
    if isinstance(spec.source, UpstreamSource):
        return None
    from models.fetch import cached_path

    try:
        path = cached_path(spec)
    except Exception:
        return None
    if path is None:
        return None
    return _header(Path(path), Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _header(path: Path, mtime_ns: int) -> dict[str, object] | None:
    """One file version's header values, read once (the keys it lacks are absent)."""
    try:
        return read_metadata(path, set(HEADER_KEYS))
    except (GGUFError, OSError):
        return None

"""What a model can do: FIM, tool calls and its context size. One owner, asked by routing and the dialects.

Before a model is loaded only the catalog can tell (a `fim_family` override, an upstream's declared
family): unknown stays None. Once loaded, the backend reports what its GGUF really holds, and the
pool keeps that (models/pool.py `Pool.capabilities`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from models.catalog import ModelSpec, UpstreamSource
from models.context_size import declared_n_ctx
from models.gguf_header import GGUFError, read_metadata
from models.tool_formats import detect_tool_format


@dataclass(frozen=True, slots=True)
class Capabilities:
    n_ctx: int  # the context the model runs with
    fim: bool | None = None  # FIM tokens in the vocabulary (None: not known before loading)
    fim_family: str | None = None  # the FIM family, where known
    tools: bool | None = None  # its chat template renders tools (None: not known before loading)
    tool_format: str | None = None  # how it writes calls (models/tool_formats.py), where known


def declared(spec: ModelSpec, *, budget_bytes: int | None = None, n_ctx: int | None = None) -> Capabilities:
    """What the catalog (and a GGUF header already on disk) says about `spec`, before it is loaded.

    `budget_bytes` and `n_ctx` (the `--ctx-size` override) are the pool's, so the context reported
    here is the one the load will use (models/context_size.py)."""
    family = spec.fim_family
    if family is None and isinstance(spec.source, UpstreamSource):
        family = spec.source.fim_family
    size = declared_n_ctx(spec, budget_bytes, n_ctx)
    tool_format = declared_tool_format(spec)
    return Capabilities(size, fim=True if family else None, fim_family=family,
                        tools=None if tool_format is None else bool(tool_format),
                        tool_format=tool_format or None)


def declared_tool_format(spec: ModelSpec) -> str | None:
    """The call syntax of `spec`'s template before loading: a family name, "" (no tools), None (unknown:
    an upstream decides for itself, or the weights are not on disk yet)."""
    if isinstance(spec.source, UpstreamSource):
        return None
    template = spec.chat_template
    if template is None:
        from models.fetch import cached_path

        try:
            path = cached_path(spec)
        except Exception:
            return None
        if path is None:
            return None
        template = _header_template(Path(path), Path(path).stat().st_mtime_ns)
        if template is None:
            return None
    fmt = detect_tool_format(template)
    return fmt.name if fmt else ""


@functools.lru_cache(maxsize=64)
def _header_template(path: Path, mtime_ns: int) -> str | None:
    """The GGUF's own chat template, read once per file version ("" when it has none)."""
    try:
        value = read_metadata(path, {"tokenizer.chat_template"}).get("tokenizer.chat_template", "")
    except (GGUFError, OSError):
        return None
    return value if isinstance(value, str) else ""

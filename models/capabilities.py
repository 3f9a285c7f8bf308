"""What a model can do: FIM, tool calls and its context size. One owner, asked by routing and the dialects.

Before a model is loaded only the catalog can tell (a `fim_family` override, an upstream's declared
family): unknown stays None. Once loaded, the backend reports what its GGUF really holds, and the
pool keeps that (models/pool.py `Pool.capabilities`).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.catalog import ModelSpec, UpstreamSource
from models.context_size import declared_n_ctx


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
    return Capabilities(size, fim=True if family else None, fim_family=family)

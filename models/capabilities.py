"""What a model can do: FIM and its context size (tool calls come with the tool-calling work). One owner, asked by routing and the dialects.

Before a model is loaded only the catalog can tell (a `fim_family` override, an upstream's declared
family): unknown stays None. Once loaded, the backend reports what its GGUF really holds, and the
pool keeps that (models/pool.py `Pool.capabilities`).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.catalog import ModelSpec, UpstreamSource


@dataclass(frozen=True, slots=True)
class Capabilities:
    n_ctx: int  # the context the model runs with
    fim: bool | None = None  # FIM tokens in the vocabulary (None: not known before loading)
    fim_family: str | None = None  # the FIM family, where known


def declared(spec: ModelSpec) -> Capabilities:
    """What the catalog alone says about `spec`, before it is loaded."""
    family = spec.fim_family
    if family is None and isinstance(spec.source, UpstreamSource):
        family = spec.source.fim_family
    return Capabilities(spec.n_ctx, fim=True if family else None, fim_family=family)

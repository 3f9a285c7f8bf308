"""The context size a model runs with: one rule, used by the pool before a load and by `declared`.

Precedence: the `--ctx-size` / `n_ctx` setting, then the catalog's explicit `n_ctx`, then the
GGUF's trained `{arch}.context_length`, capped so the weights plus the KV cache fit the memory
budget. Upstream models run with whatever context their server has; the catalog states it.
"""

from __future__ import annotations

from pathlib import Path

from models.catalog import ModelSpec, UpstreamSource
from models.gguf_header import KV_KEYS, GGUFError, kv_cache_bytes, read_metadata

DEFAULT_N_CTX = 4096  # when nothing says otherwise: no header value, an upstream without n_ctx
MIN_N_CTX = 512  # a tight budget never shrinks a context below this (the load then fails loudly)
N_CTX_STEP = 256  # a capped context is rounded down to this (llama.cpp pads KV to 256 cells)

_CONTEXT_KEY = "{arch}.context_length"


def resolve_n_ctx(
    spec: ModelSpec, weights: Path | None, budget_bytes: int | None = None, override: int | None = None
) -> int:
    """Tokens of context `spec` runs with, given its weights file (None: not on disk yet)."""
    if isinstance(spec.source, UpstreamSource):
        return spec.n_ctx or DEFAULT_N_CTX
    if override:
        return int(override)
    if spec.n_ctx:
        return spec.n_ctx
    if weights is None:
        return DEFAULT_N_CTX
    try:
        metadata = read_metadata(Path(weights), {_CONTEXT_KEY, *KV_KEYS})
        size = int(spec.size_bytes or Path(weights).stat().st_size)
    except (GGUFError, OSError):
        return DEFAULT_N_CTX  # the load itself reports what is wrong with the file
    arch = metadata.get("general.architecture")
    trained = metadata.get(f"{arch}.context_length")
    n_ctx = int(trained) if isinstance(trained, int) and trained > 0 else DEFAULT_N_CTX
    per_token = kv_cache_bytes(metadata, 1)
    if budget_bytes is None or per_token <= 0:
        return n_ctx
    fits = (int(budget_bytes) - size) // per_token
    if fits >= n_ctx:
        return n_ctx
    return max(min(n_ctx, MIN_N_CTX), fits // N_CTX_STEP * N_CTX_STEP)


def declared_n_ctx(spec: ModelSpec, budget_bytes: int | None = None, override: int | None = None) -> int:
    """resolve_n_ctx before a load, from weights already on disk (no network): what /api/show reports."""
    weights = None
    if not isinstance(spec.source, UpstreamSource) and not (override or spec.n_ctx):
        from models.fetch import cached_path

        try:
            weights = cached_path(spec)
        except Exception:  # a broken HF cache: the load will say what is wrong
            weights = None
    return resolve_n_ctx(spec, weights, budget_bytes, override)

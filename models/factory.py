"""Which Backend serves a catalog entry: llama.cpp in-process for files, the upstream client for servers."""

from __future__ import annotations

from pathlib import Path

from models.backend import Backend, BackendOptions
from models.catalog import ModelSpec, UpstreamSource
from models.errors import ModelLoadFailed


def create_backend(spec: ModelSpec, weights: Path | None, options: BackendOptions) -> Backend:
    """Build (load) the backend for `spec`; `weights` is the resolved GGUF path (None for upstreams).

    Imports are lazy: an upstream-only setup never loads llama.cpp, and a files-only one never
    imports the HTTP client.
    """
    if isinstance(spec.source, UpstreamSource):
        from models.upstream_backend import UpstreamBackend

        return UpstreamBackend(spec, options)
    if weights is None:
        raise ModelLoadFailed(f"Model {spec.id!r} has no weights file to load.", model=spec.id)
    from models.llama_backend import LlamaBackend

    return LlamaBackend(spec, weights, options)

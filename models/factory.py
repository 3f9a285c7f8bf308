"""Which Backend serves a catalog entry: llama.cpp in-process for files (generating or embedding), the upstream
client for servers."""

from __future__ import annotations

from pathlib import Path

from models.backend import Backend, BackendOptions
from models.catalog import ModelSpec, UpstreamSource
from models.context_size import resolve_n_ctx
from models.errors import ModelLoadFailed


def create_backend(spec: ModelSpec, weights: Path | None, options: BackendOptions) -> Backend:
    """Build (load) the backend for `spec`; `weights` is the resolved GGUF path (None for upstreams).

    Imports are lazy: an upstream-only setup never loads llama.cpp, and a files-only one never
    imports the HTTP client. The pool passes a spec whose n_ctx it has resolved against its budget;
    any other caller gets the trained context (or the upstream default) here.
    """
    if spec.n_ctx is None:
        spec = spec.model_copy(update={"n_ctx": resolve_n_ctx(spec, weights)})
    if isinstance(spec.source, UpstreamSource):
        from models.upstream_backend import UpstreamBackend

        return UpstreamBackend(spec, options)
    if weights is None:
        raise ModelLoadFailed(f"Model {spec.id!r} has no weights file to load.", model=spec.id)
    if spec.embedding:
        from models.llama_embedder import LlamaEmbedder

        return LlamaEmbedder(spec, weights, options)
    from models.llama_backend import LlamaBackend

    return LlamaBackend(spec, weights, options)

"""The HTTP app: create_app(settings) wires catalog, classifier, pool and the dialect adapters.

All state lives in one typed AppState on the app (no module globals): several apps can live in one
process, which the tests rely on. The pool is created in the lifespan (and closed there) unless one
is given.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from classifier import ArtifactError, Classifier
from models.backend import BackendOptions
from models.catalog import Catalog, select_catalog
from models.pool import Pool
from router.dialects import anthropic, embeddings, llamacpp, ollama, openai, responses, route
from router.errors import NotSupported, install_error_handlers
from router.security import check_bind, install_security
from router.settings import Settings
from router.state import AppState

log = logging.getLogger("router.app")

# Endpoints clients probe that the router knowingly does not offer: a clear 501, not a 404.
NOT_OFFERED = {
    "/embedding": "llama.cpp's native embeddings (use /v1/embeddings)",
    "/embeddings": "llama.cpp's native embeddings (use /v1/embeddings)",
    "/tokenize": "tokenization over HTTP",
    "/detokenize": "tokenization over HTTP",
    "/apply-template": "template rendering over HTTP",
    "/api/pull": "pulling models over HTTP (use `route models pull`)",
    "/api/delete": "deleting models over HTTP (use `route models rm`)",
}
# Ollama's clients delete with DELETE; the rest are POSTs.
REFUSED_METHODS = {"/api/delete": ["DELETE", "POST"]}


def build_catalog(settings: Settings) -> Catalog:
    """The catalog: a catalog file, else LABEL=PATH files, else the built-in profile (one rule, models.catalog's)."""
    return select_catalog(catalog=settings.catalog, models=dict(settings.models), profile=settings.profile)


def build_classifier(settings: Settings) -> tuple[Classifier, str | None]:
    """The trained classifier, or shape rules only with a loud warning when the artifact is missing/tampered."""
    try:
        return Classifier.load(settings.classifier_artifact), None
    except ArtifactError as exc:
        warning = f"classifier artifact unusable ({exc}); routing by request shape only"
        log.warning("!!! %s !!!", warning)
        return Classifier.shape_only(), warning


def build_pool(settings: Settings, catalog: Catalog) -> Pool:
    options = BackendOptions(
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads_batch,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        connect_timeout_s=settings.connect_timeout_s,
        first_token_timeout_s=settings.first_token_timeout_s,
        idle_stream_timeout_s=settings.idle_stream_timeout_s,
        use_mmap=settings.use_mmap,
    )
    return Pool(
        catalog,
        options=options,
        memory_budget_bytes=settings.memory_budget_bytes,
        idle_ttl_s=settings.idle_ttl_s,
        queue_size=settings.queue_size,
        n_ctx=settings.n_ctx,
        prompt_cache_bytes=settings.prompt_cache_bytes,
    )


def create_app(
    settings: Settings, *, pool: Pool | None = None, classifier: Classifier | None = None, catalog: Catalog | None = None
) -> FastAPI:
    """The app for these settings; pass pool/classifier/catalog to share or substitute real ones."""
    check_bind(settings)
    catalog = catalog if catalog is not None else build_catalog(settings)
    classifier_warning = None
    if classifier is None:
        classifier, classifier_warning = build_classifier(settings)
    app_state = AppState(settings, catalog, classifier, classifier_warning)
    if pool is not None:
        app_state.start(pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        app_state.loop = loop
        owns_pool = pool is None
        if owns_pool:
            app_state.start(build_pool(settings, catalog))
        for model_id in settings.preload:
            await loop.run_in_executor(None, app_state.pool.preload, model_id)
        try:
            yield
        finally:
            for gen in list(app_state.superseder.inflight.values()):
                gen.cancel()
            if owns_pool:
                app_state.pool.close()

    app = FastAPI(
        title="prompt-router",
        description="Routes each request to a coder, FIM or instruct model; speaks OpenAI, llama.cpp and Ollama.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.app_state = app_state

    install_error_handlers(app)
    install_security(app, settings)
    for dialect in (openai, responses, anthropic, embeddings, llamacpp, ollama, route):
        app.include_router(dialect.build())

    for path, what in NOT_OFFERED.items():
        app.add_api_route(path, refusal(what), methods=REFUSED_METHODS.get(path, ["POST"]), include_in_schema=False)
    return app


def refusal(what: str):
    """A handler that answers 501 `not_supported` for something the router does not offer."""

    async def not_offered(request: Request) -> None:
        raise NotSupported(f"The router does not offer {what}.")

    return not_offered

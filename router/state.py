"""The app's state, typed: what create_app wires once and every handler reads.

The pool (and so the router) exists once the app has started (its lifespan creates or adopts
it); asking for it before then is a bug, said loudly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

from classifier import Classifier
from models.catalog import Catalog
from models.pool import Pool
from router.metrics import Metrics
from router.routing import Router
from router.settings import Settings
from router.superseder import Superseder


@dataclass
class AppState:
    settings: Settings
    catalog: Catalog
    classifier: Classifier
    classifier_warning: str | None = None  # set when the artifact could not load (shape rules only)
    superseder: Superseder = field(default_factory=Superseder)
    started_at: float = field(default_factory=time.time)
    metrics: Metrics = field(init=False)
    loop: asyncio.AbstractEventLoop | None = None  # the serving loop, for tools that inspect from threads
    _pool: Pool | None = None
    _router: Router | None = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(self)

    def start(self, pool: Pool) -> None:
        self._pool = pool
        self._router = Router(self.catalog, self.classifier, pool, self.settings.model_aliases)

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the app has not started: its pool is created in the lifespan")
        return self._pool

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the app has not started: its router is created in the lifespan")
        return self._router


def app_state(app: FastAPI) -> AppState:
    return app.state.app_state


def state(request: Request) -> AppState:
    return request.app.state.app_state

"""Prometheus metrics on a per-app registry: requests, latency, tokens, and the pool's own counters.

Request metrics are recorded by the handlers (through a Recorder per request); the pool's queue
depths, loads and evictions are read at scrape time, so nothing is kept twice.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from models.backend import Done
from models.errors import RouterError

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def counter_value(counters: Any, kind: str, model_id: str) -> float | None:
    """Read pool.counters whichever plain shape it has: {kind: {model: n}}, {model: {kind: n}} or attributes."""
    if counters is None:
        return None
    by_kind = counters.get(kind) if isinstance(counters, dict) else getattr(counters, kind, None)
    if isinstance(by_kind, dict):
        return by_kind.get(model_id)
    by_model = counters.get(model_id) if isinstance(counters, dict) else None
    if isinstance(by_model, dict):
        return by_model.get(kind)
    if by_model is not None:
        return getattr(by_model, kind, None)
    return None


class PoolCollector(Collector):
    """Queue depth, loaded/generating state, loads and evictions (read from the pool at scrape time),
    plus the app's classifier mode and FIM superseding count."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterable:
        shape_only = GaugeMetricFamily(
            "router_classifier_shape_only", "1 when the classifier artifact could not load (shape rules only).")
        shape_only.add_metric([], 1.0 if getattr(self.state, "classifier_warning", None) else 0.0)
        superseded = CounterMetricFamily("router_fim_superseded", "FIM requests cancelled by a newer one from the same client.")
        superseder = getattr(self.state, "superseder", None)
        superseded.add_metric([], float(superseder.superseded if superseder is not None else 0))
        pool = getattr(self.state, "pool", None)
        if pool is None:
            return [shape_only, superseded]
        queue = GaugeMetricFamily("router_queue_depth", "Requests waiting for each model.", labels=["model"])
        loaded = GaugeMetricFamily("router_model_loaded", "1 when the model is loaded.", labels=["model"])
        busy = GaugeMetricFamily("router_model_generating", "Generations running on the model.", labels=["model"])
        loads = CounterMetricFamily("router_model_loads", "Model loads since start.", labels=["model"])
        evictions = CounterMetricFamily("router_model_evictions", "Models evicted to make room.", labels=["model"])
        unloads = CounterMetricFamily("router_model_unloads", "Models unloaded (idle TTL or asked).", labels=["model"])
        cancelled = CounterMetricFamily("router_generations_cancelled", "Generations cancelled.", labels=["model"])
        rejected = CounterMetricFamily("router_requests_rejected", "Requests refused: queue full.", labels=["model"])
        pool_tokens = CounterMetricFamily("router_pool_tokens", "Tokens generated, as the pool counts them.", labels=["model"])
        counters = getattr(pool, "counters", None)
        for st in pool.status():
            queue.add_metric([st.id], float(getattr(st, "queue_depth", 0) or 0))
            loaded.add_metric([st.id], 1.0 if getattr(st, "loaded", False) else 0.0)
            generating = getattr(st, "generating", 0)
            busy.add_metric([st.id], float(generating if isinstance(generating, int | float) else bool(generating)))
            for family, kind in ((loads, "loads"), (evictions, "evictions"), (unloads, "unloads"),
                                 (cancelled, "cancelled"), (rejected, "rejected"), (pool_tokens, "tokens")):
                value = counter_value(counters, kind, st.id)
                family.add_metric([st.id], float(value or 0))
        return [shape_only, superseded, queue, loaded, busy, loads, evictions, unloads, cancelled, rejected, pool_tokens]


class Metrics:
    """All of one app's metrics; a fresh registry per app, so tests and several apps never collide."""

    def __init__(self, app_state: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "router_requests", "Requests answered.", ["dialect", "endpoint", "label", "model", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "router_request_duration_seconds", "Time from request to last byte of the answer.",
            ["dialect", "label", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.first_token = Histogram(
            "router_time_to_first_token_seconds", "Time from request to the first generated event.",
            ["dialect", "label", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "router_tokens_generated", "Completion tokens generated.", ["label", "model"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "router_prompt_tokens", "Prompt tokens evaluated.", ["label", "model"], registry=self.registry
        )
        self.registry.register(PoolCollector(app_state))

    def recorder(self, dialect: str, endpoint: str, label: str, model: str) -> RequestRecorder:
        return RequestRecorder(self, dialect, endpoint, label, model)

    def count_error(self, request: Any, err: RouterError) -> None:
        """An error answered by the error handler (possibly before any routing happened)."""
        from router.errors import dialect_for_path  # errors imports nothing from here at import time

        route = getattr(request.state, "route", None)
        path = request.url.path
        self.requests.labels(
            dialect_for_path(path), getattr(request.state, "endpoint", "other"),
            route.label if route else "", route.model_id if route else "", str(err.status),
        ).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestRecorder:
    """One request's measurements: the time to first token, then its end."""

    def __init__(self, metrics: Metrics, dialect: str, endpoint: str, label: str, model: str) -> None:
        self.metrics = metrics
        self.labels = (dialect, label, model)
        self.dialect, self.endpoint, self.label, self.model = dialect, endpoint, label, model
        self.started = time.perf_counter()
        self._finished = False

    def first_token(self, seconds: float) -> None:
        self.metrics.first_token.labels(*self.labels).observe(seconds)

    def finish(self, done: Done | None, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        m = self.metrics
        m.requests.labels(self.dialect, self.endpoint, self.label, self.model, str(status)).inc()
        m.latency.labels(*self.labels).observe(time.perf_counter() - self.started)
        if done is not None:
            if done.completion_tokens:
                m.tokens.labels(self.label, self.model).inc(done.completion_tokens)
            if done.prompt_tokens:
                m.prompt_tokens.labels(self.label, self.model).inc(done.prompt_tokens)

"""Prometheus metrics on a per-app registry: requests, latency, tokens, and the pool's own counters.

Request metrics are recorded by the handlers (through a Recorder per request); the pool's queue
depths, loads and evictions are read at scrape time, so nothing is kept twice.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fastapi import Request

from models.errors import RouterError
from models.events import Finish

if TYPE_CHECKING:  # the state owns the metrics: a type-only import, no cycle
    from router.state import AppState

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PoolCollector(Collector):
    """Queue depth, loaded/generating state, loads and evictions (read from the pool at scrape time),
    plus the app's classifier mode and FIM superseding count."""

    def __init__(self, app_state: AppState) -> None:
        self.state = app_state

    def collect(self) -> Iterable:
        shape_only = GaugeMetricFamily(
            "router_classifier_shape_only", "1 when the classifier artifact could not load (shape rules only).")
        shape_only.add_metric([], 1.0 if self.state.classifier_warning else 0.0)
        superseded = CounterMetricFamily("router_fim_superseded", "FIM requests cancelled by a newer one from the same client.")
        superseded.add_metric([], float(self.state.superseder.superseded))
        if not self.state.started:
            return [shape_only, superseded]
        pool = self.state.pool
        states = pool.prompt_states
        saved_bytes = GaugeMetricFamily("router_prompt_states_bytes", "RAM held by saved prompt states (KV caches).")
        saved_bytes.add_metric([], float(states.used_bytes))
        saved = CounterMetricFamily("router_prompt_states", "Saved prompt states by what happened to them.",
                                    labels=["event"])
        for event, count in dataclasses.asdict(states.counters).items():
            saved.add_metric([event], float(count))
        queue = GaugeMetricFamily("router_queue_depth", "Requests waiting for each model.", labels=["model"])
        loaded = GaugeMetricFamily("router_model_loaded", "1 when the model is loaded.", labels=["model"])
        busy = GaugeMetricFamily("router_model_generating", "Generations running on the model.", labels=["model"])
        loads = CounterMetricFamily("router_model_loads", "Model loads since start.", labels=["model"])
        evictions = CounterMetricFamily("router_model_evictions", "Models evicted to make room.", labels=["model"])
        unloads = CounterMetricFamily("router_model_unloads", "Models unloaded (idle TTL or asked).", labels=["model"])
        cancelled = CounterMetricFamily("router_generations_cancelled", "Generations cancelled.", labels=["model"])
        rejected = CounterMetricFamily("router_requests_rejected", "Requests refused: queue full.", labels=["model"])
        pool_tokens = CounterMetricFamily("router_pool_tokens", "Tokens generated, as the pool counts them.", labels=["model"])
        counters = dataclasses.asdict(pool.counters)
        for st in pool.status():
            queue.add_metric([st.id], float(st.queue_depth))
            loaded.add_metric([st.id], 1.0 if st.loaded else 0.0)
            busy.add_metric([st.id], float(st.generating))
            for family, kind in ((loads, "loads"), (evictions, "evictions"), (unloads, "unloads"),
                                 (cancelled, "cancelled"), (rejected, "rejected"), (pool_tokens, "tokens")):
                family.add_metric([st.id], float(counters[kind].get(st.id, 0)))
        return [shape_only, superseded, queue, loaded, busy, loads, evictions, unloads, cancelled, rejected, pool_tokens,
                saved_bytes, saved]


class Metrics:
    """All of one app's metrics; a fresh registry per app, so tests and several apps never collide."""

    def __init__(self, app_state: AppState) -> None:
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
        self.prompt_time = Histogram(
            "router_prompt_eval_seconds", "Time the model took to evaluate a request's prompt (after any reuse).",
            ["label", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.prompt_evaluated = Counter(
            "router_prompt_tokens_evaluated", "Prompt tokens the model evaluated.", ["label", "model"],
            registry=self.registry,
        )
        self.prompt_reused = Counter(
            "router_prompt_tokens_reused", "Prompt tokens taken from a KV cache instead (kept or restored).",
            ["label", "model"], registry=self.registry,
        )
        self.registry.register(PoolCollector(app_state))

    def recorder(self, dialect: str, endpoint: str, label: str, model: str) -> RequestRecorder:
        return RequestRecorder(self, dialect, endpoint, label, model)

    def count_error(self, request: Request, err: RouterError) -> None:
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

    def finish(self, done: Finish | None, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        m = self.metrics
        m.requests.labels(self.dialect, self.endpoint, self.label, self.model, str(status)).inc()
        m.latency.labels(*self.labels).observe(time.perf_counter() - self.started)
        if done is not None:
            if done.usage.completion_tokens:
                m.tokens.labels(self.label, self.model).inc(done.usage.completion_tokens)
            usage = done.usage
            if usage.prompt_tokens:
                m.prompt_evaluated.labels(self.label, self.model).inc(max(0, usage.prompt_tokens - usage.cached_tokens))
                m.prompt_reused.labels(self.label, self.model).inc(usage.cached_tokens)
                if usage.prompt_ms:
                    m.prompt_time.labels(self.label, self.model).observe(usage.prompt_ms / 1000.0)

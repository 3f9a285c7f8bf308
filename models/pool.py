"""The pool of loaded models: load on first use, a memory budget, queues, workers and cancellation.

Every catalog model gets an entry. A request is queued on its model's bounded queue (full:
Overloaded with a Retry-After estimate) and served by that model's worker threads: one per
`backend.parallel` slot, because a llama.cpp context is not thread-safe. The first request
for an unloaded model starts a load in its own thread; a load is never aborted because the
request that caused it went away, and a failed load fails that model's queued requests only.

Memory: each model counts its weights file plus its KV cache (read from the GGUF header)
against the budget. Loading evicts idle, unpinned models in least-recently-used order; a model that is
generating, has requests queued, or is pinned is never evicted. When the budget is held by
busy models the load waits for them (up to `load_wait_s`, then Overloaded: try again); when
it can never fit (the model alone, or beside the pinned ones, exceeds the budget) it fails at
once with ModelLoadFailed saying so. Idle models are unloaded after `idle_ttl_s`.

Tokens reach the caller through a `Generation`: iterate it with `for` (blocking) or `async
for` (asyncio; the worker hands events to the loop with call_soon_threadsafe only when the
consumer is waiting, so at most one thread hop per token and none while it lags behind).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.backend import Backend, BackendOptions
from models.capabilities import Capabilities, declared
from models.catalog import Catalog, ModelSpec, UpstreamSource
from models.context_size import resolve_n_ctx
from models import fim_end
from models.events import Event, Finish, TextDelta
from models.prompt_states import PromptStates
from models.fim import holds_fim_tokens
from models.request import Request
from models.errors import (
    ContextLengthExceeded,
    FimNotSupported,
    ModelLoadFailed,
    ModelNotFound,
    Overloaded,
    RouterError,
    UnsupportedParameter,
)

LOAD_WAIT_S = 120.0
# A streaming consumer's first token leaves the process before the worker decodes the next one
# (as a direct generator's would): on a small CPU the next decode's threads otherwise take the
# cores the event loop needs to send it (bench/serving.py: TTFT). Never longer than this.
FIRST_TOKEN_HANDOFF_S = 0.010


@dataclass(frozen=True)
class ModelState:
    """One catalog model as the pool sees it (for /api/ps, /v1/models, /props and routing)."""

    id: str
    labels: list[str]
    loaded: bool
    generating: int  # generations running now
    queue_depth: int  # generations waiting
    size_bytes: int | None  # bytes held when loaded (weights + KV cache), else the weights' size if known
    last_used: float | None  # wall-clock time (time.time()) of the last finished generation or load
    pinned: bool
    capabilities: Capabilities  # what the catalog declares until loaded, then what the model holds
    load_error: str | None
    loading: bool = False


@dataclass(frozen=True)
class PoolCounters:
    """Monotonic counters per model id, for /metrics."""

    loads: dict[str, int] = field(default_factory=dict)
    load_failures: dict[str, int] = field(default_factory=dict)
    evictions: dict[str, int] = field(default_factory=dict)  # unloaded to make room
    unloads: dict[str, int] = field(default_factory=dict)  # idle TTL or asked for
    requests: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # queue full
    cancelled: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # generated
    prompt_tokens: dict[str, int] = field(default_factory=dict)


class _Failure:
    """A request that failed before its first event: iteration raises `error`."""

    __slots__ = ("error",)

    def __init__(self, error: RouterError) -> None:
        self.error = error


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Generation:
    """One submitted request: iterate for its events; `cancel()` drops or stops it."""

    def __init__(self, pool: Pool, model_id: str, request: Request) -> None:
        self.model_id = model_id
        self.request = request
        self.cancel_event = threading.Event()
        self.submitted_at = time.monotonic()
        self._pool = pool
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: collections.deque[Event | _Failure] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._ended = False  # the consumer has seen Finish or the failure
        self._load_ms = 0.0
        self._first_token_out: threading.Event | None = None

    # ---- producer side (worker threads) ----
    def _put(self, item: Event | _Failure) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
            self._ready.notify()
        if waiter is not None:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def _await_first_token_out(self) -> None:
        """After the first event: wait (briefly) for a consumer that asked to send it first."""
        out = self._first_token_out
        if out is not None:
            out.wait(FIRST_TOKEN_HANDOFF_S)

    # ---- consumer side ----
    def hand_off_first_token(self) -> None:
        """Ask the worker to wait, after the first token, until `first_token_sent()` (streaming callers)."""
        if self._first_token_out is None:
            self._first_token_out = threading.Event()

    def first_token_sent(self) -> None:
        if self._first_token_out is not None:
            self._first_token_out.set()

    def cancel(self) -> None:
        """Drop it if still queued; stop it within one token if running. Idempotent."""
        self.first_token_sent()
        if not self.cancel_event.is_set():
            self.cancel_event.set()
            self._pool._cancel(self)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def __iter__(self) -> Iterator[Event]:
        return self._iterate()

    def _iterate(self) -> Iterator[Event]:
        try:
            while True:
                with self._lock:
                    while not self._items:
                        self._ready.wait()
                    item = self._items.popleft()
                last = self._settle(item)
                yield item
                if last:
                    return
        finally:
            if not self._ended:
                self.cancel()

    def _settle(self, item: Any) -> bool:
        """Raise a failure that came before any event; True when `item` is the last event."""
        if isinstance(item, _Failure):
            self._ended = True
            raise item.error
        if isinstance(item, Finish):
            self._ended = True
            return True
        return False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                with self._lock:
                    if self._items:
                        item = self._items.popleft()
                        fut = None
                    else:
                        item = None
                        fut = self._waiter = loop.create_future()
                if fut is not None:
                    await fut
                    continue
                last = self._settle(item)
                yield item
                if last:
                    return
        finally:
            with self._lock:
                self._waiter = None
            if not self._ended:
                self.cancel()

    def collect(self) -> tuple[str, Finish]:
        """Block until done: the whole text and the Finish (non-streaming callers that want text only)."""
        parts: list[str] = []
        for ev in self:
            if isinstance(ev, Finish):
                return "".join(parts), ev
            if isinstance(ev, TextDelta):
                parts.append(ev.text)
        raise RuntimeError("generation ended without Finish")  # pragma: no cover - Finish always ends it


class _Entry:
    """The pool's bookkeeping for one catalog model (guarded by the pool's lock)."""

    def __init__(self, spec: ModelSpec, lock: threading.Lock, capabilities: Capabilities) -> None:
        self.spec = spec
        self.state = "unloaded"  # unloaded | loading | loaded
        self.backend: Backend | None = None
        self.queue: collections.deque[Generation] = collections.deque()
        self.running: set[Generation] = set()
        self.work = threading.Condition(lock)
        self.epoch = 0  # bumped on every load and unload: workers of an older epoch exit
        self.pinned = False
        self.unload_when_idle = False
        self.last_used = 0.0  # monotonic
        self.last_used_wall: float | None = None
        self.size_bytes: int = 0  # counted against the budget while loading or loaded
        self.load_error: str | None = None
        self.load_done: threading.Event = threading.Event()
        self.load_exc: RouterError | None = None
        self.capabilities = capabilities
        self.avg_s = 1.0  # recent seconds per request, for Retry-After

    @property
    def busy(self) -> bool:
        return self.state == "loading" or bool(self.running) or bool(self.queue)

    @property
    def evictable(self) -> bool:
        return self.state == "loaded" and not self.pinned and not self.running and not self.queue


def _default_resolve(spec: ModelSpec) -> Path | None:
    from models.fetch import resolve_weights

    return resolve_weights(spec)


def _default_factory(spec: ModelSpec, weights: Path | None, options: BackendOptions) -> Backend:
    from models.factory import create_backend

    return create_backend(spec, weights, options)


class Pool:
    """Loads catalog models on demand and runs their generations; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        resolve: Callable[[ModelSpec], Path | None] | None = None,
        factory: Callable[[ModelSpec, Path | None, BackendOptions], Backend] | None = None,
        options: BackendOptions | None = None,
        memory_budget_bytes: int,
        idle_ttl_s: float = 0.0,
        queue_size: int = 16,
        load_wait_s: float = LOAD_WAIT_S,
        n_ctx: int | None = None,
        prompt_cache_bytes: int | None = None,
    ) -> None:
        self.catalog = catalog
        self._resolve = resolve or _default_resolve
        self._factory = factory or _default_factory
        self.memory_budget_bytes = int(memory_budget_bytes)
        # Saved KV caches take what the loaded models leave of the budget (at most prompt_cache_bytes).
        self.prompt_states = PromptStates()
        self.prompt_cache_bytes = prompt_cache_bytes
        self.options = dataclasses.replace(options or BackendOptions(), prompt_states=self.prompt_states)
        self.idle_ttl_s = float(idle_ttl_s)
        self.queue_size = int(queue_size)
        self.load_wait_s = float(load_wait_s)
        self.n_ctx = n_ctx  # `--ctx-size`: every local model's context (None: models/context_size.py decides)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # memory freed / a model went idle
        self._tick = threading.Condition(self._lock)  # wakes the idle reaper
        self._entries: dict[str, _Entry] = {}
        self._counts: dict[str, dict[str, int]] = {f.name: {} for f in dataclasses.fields(PoolCounters)}
        self._closed = False
        self._limit_prompt_states()
        self._reaper: threading.Thread | None = None
        if self.idle_ttl_s > 0:
            self._reaper = threading.Thread(target=self._reap, name="pool-idle-reaper", daemon=True)
            self._reaper.start()

    # ---- public API ------------------------------------------------------------------------

    def submit(self, model_id: str, request: Request) -> Generation:
        """Queue a request; returns at once. Raises ModelNotFound, Overloaded, FimNotSupported (if known)."""
        with self._lock:
            entry = self._entry(model_id)
            if self._closed:
                raise ModelLoadFailed("The model pool is shut down.", model=model_id)
            if entry.capabilities.fim is False and _asks_fim(request):
                raise FimNotSupported(
                    f"Model {model_id!r} has no fill-in-the-middle tokens in its vocabulary, so it cannot do FIM. "
                    "Use a FIM-capable coder model.",
                    model=model_id,
                )
            if len(entry.queue) >= self.queue_size:
                self._count("rejected", model_id)
                retry = self._retry_after(entry)
                raise Overloaded(
                    f"Model {model_id!r} has {len(entry.queue)} requests waiting (the limit); retry in {retry:.0f} s.",
                    retry_after=retry,
                    model=model_id,
                )
            gen = Generation(self, model_id, request)
            entry.queue.append(gen)
            self._count("requests", model_id)
            if entry.state == "loaded":
                entry.work.notify()
            elif entry.state == "unloaded":
                self._start_load(entry)
            return gen

    def preload(self, model_id: str, pin: bool = True, *, wait: bool = True) -> None:
        """Load a model now (and pin it: never evicted or idle-unloaded). Raises ModelLoadFailed if it fails."""
        with self._lock:
            entry = self._entry(model_id)
            entry.pinned = entry.pinned or pin
            if entry.state == "unloaded":
                self._start_load(entry)
            done = entry.load_done
        if wait:
            done.wait()
            with self._lock:
                if entry.state != "loaded" and entry.load_exc is not None:
                    raise entry.load_exc

    def unload(self, model_id: str) -> bool:
        """Unpin and unload a model now if idle, else as soon as its work is done. True if unloaded now."""
        with self._lock:
            entry = self._entry(model_id)
            entry.pinned = False
            if entry.state == "loaded" and not entry.busy:
                self._unload_locked(entry, "unloads")
                return True
            if entry.state != "unloaded":
                entry.unload_when_idle = True
            return False

    def status(self) -> list[ModelState]:
        with self._lock:
            out = []
            for spec in self.catalog.models:
                e = self._entries.get(spec.id)
                loaded = e is not None and e.state == "loaded"
                size = e.size_bytes if e is not None and e.state != "unloaded" else spec.weights_bytes
                out.append(
                    ModelState(
                        id=spec.id,
                        labels=list(spec.labels),
                        loaded=loaded,
                        generating=len(e.running) if e else 0,
                        queue_depth=len(e.queue) if e else 0,
                        size_bytes=size,
                        last_used=e.last_used_wall if e else None,
                        pinned=e.pinned if e else False,
                        capabilities=(e or self._entry(spec.id)).capabilities,
                        load_error=e.load_error if e else None,
                        loading=e is not None and e.state == "loading",
                    )
                )
            return out

    def capabilities(self, model_id: str) -> Capabilities:
        """What the model can do, as far as known now (the catalog's word until it has loaded)."""
        with self._lock:
            return self._entry(model_id).capabilities

    def backend(self, model_id: str) -> Backend | None:
        """The loaded backend (for /props-style introspection), or None. Never call generate on it."""
        with self._lock:
            e = self._entries.get(model_id)
            return e.backend if e is not None and e.state == "loaded" else None

    def count_prompt_tokens(self, model_id: str, request: Request) -> int:
        """The request's prompt as the model would see it (its template, its tokenizer), counted:
        Anthropic's count_tokens. Loads the model if it is not loaded (unpinned)."""
        self.preload(model_id, pin=False)
        backend = self.backend(model_id)
        if backend is None:  # evicted again between the load and now
            raise ModelLoadFailed(f"Model {model_id!r} was unloaded before its tokens could be counted; retry.",
                                  model=model_id)
        return backend.count_prompt_tokens(request)

    @property
    def counters(self) -> PoolCounters:
        with self._lock:
            return PoolCounters(**{k: dict(v) for k, v in self._counts.items()})

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used_locked()

    def close(self) -> None:
        """Cancel everything, stop the workers and free every model."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for entry in self._entries.values():
                for gen in entry.queue:
                    gen.cancel_event.set()
                    gen._put(Finish("cancelled"))
                entry.queue.clear()
                for gen in entry.running:
                    gen.cancel_event.set()
            self._space.notify_all()
            self._tick.notify_all()
            waiting = [e for e in self._entries.values() if e.running]
        deadline = time.monotonic() + 10.0
        for entry in waiting:  # running generations stop within one token
            while time.monotonic() < deadline:
                with self._lock:
                    if not entry.running:
                        break
                time.sleep(0.01)
        with self._lock:
            for entry in self._entries.values():
                if entry.state == "loaded":
                    self._unload_locked(entry, None)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- loading and memory -------------------------------------------------------------------

    def _entry(self, model_id: str) -> _Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            spec = self.catalog.get(model_id)
            if spec is None:
                known = ", ".join(s.id for s in self.catalog.models) or "(none)"
                raise ModelNotFound(f"The model {model_id!r} is not in the catalog. Known: {known}.", param="model")
            caps = declared(spec, budget_bytes=self.memory_budget_bytes, n_ctx=self.n_ctx)
            entry = self._entries[model_id] = _Entry(spec, self._lock, caps)
        return entry

    def _start_load(self, entry: _Entry) -> None:
        entry.state = "loading"
        entry.load_done = threading.Event()
        entry.load_exc = None
        threading.Thread(target=self._load, args=(entry,), name=f"pool-load-{entry.spec.id}", daemon=True).start()

    def _load(self, entry: _Entry) -> None:
        spec = entry.spec
        started = time.perf_counter()
        backend: Backend | None = None
        error: RouterError | None = None
        try:
            upstream = isinstance(spec.source, UpstreamSource)
            weights = None if upstream else self._resolve(spec)
            # The backend gets the context resolved here, so the estimate and the load agree.
            n_ctx = resolve_n_ctx(spec, weights, self.memory_budget_bytes, self.n_ctx)
            spec = spec.model_copy(update={"n_ctx": n_ctx})
            need = 0 if upstream else self._estimate(spec, weights)
            with self._lock:
                self._reserve(entry, need)
            backend = self._factory(spec, weights, self.options)
        except RouterError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected library error: still this model only
            error = ModelLoadFailed(f"Model {spec.id!r} failed to load: {type(exc).__name__}: {exc}", model=spec.id)
        load_ms = (time.perf_counter() - started) * 1000.0
        to_close: Backend | None = None
        with self._lock:
            if error is None and self._closed:
                to_close, error = backend, ModelLoadFailed("The model pool is shut down.", model=spec.id)
            if error is not None:
                entry.state = "unloaded"
                entry.size_bytes = 0
                entry.load_error = error.message
                entry.load_exc = error
                self._count("load_failures", spec.id)
                for gen in entry.queue:
                    gen._put(_Failure(error))
                entry.queue.clear()
                self._space.notify_all()
            else:
                assert backend is not None
                entry.backend = backend
                entry.state = "loaded"
                entry.load_error = None
                entry.epoch += 1
                entry.size_bytes = backend.memory_bytes
                entry.capabilities = backend.capabilities
                entry.last_used = time.monotonic()
                entry.last_used_wall = time.time()
                self._count("loads", spec.id)
                for gen in entry.queue:
                    gen._load_ms = load_ms
                for slot in range(max(1, backend.parallel)):
                    threading.Thread(
                        target=self._work, args=(entry, entry.epoch, backend),
                        name=f"pool-worker-{spec.id}-{slot}", daemon=True,
                    ).start()
                self._evict_over_budget(keep=entry)  # a catalog's size_bytes may understate the real size
                self._limit_prompt_states()
                self._tick.notify_all()
            entry.load_done.set()
        if to_close is not None:
            to_close.close()

    def _estimate(self, spec: ModelSpec, weights: Path | None) -> int:
        """Bytes a model will hold, before loading it: its weights file plus its KV cache."""
        from models.gguf_header import file_kv_cache_bytes

        size = int(spec.size_bytes or 0)
        if weights is None:
            return size
        try:
            size = size or weights.stat().st_size
        except OSError:
            return size
        return size + file_kv_cache_bytes(weights, spec.n_ctx)

    def _used_locked(self, exclude: _Entry | None = None) -> int:
        return sum(e.size_bytes for e in self._entries.values() if e.state != "unloaded" and e is not exclude)

    def _reserve(self, entry: _Entry, need: int) -> None:
        """Make room for `need` bytes (lock held): evict idle LRU models, wait for busy ones, or fail."""
        deadline = time.monotonic() + self.load_wait_s
        while True:
            if self._closed:
                raise ModelLoadFailed("The model pool is shut down.", model=entry.spec.id)
            used = self._used_locked(exclude=entry)
            self._limit_prompt_states(used + need)  # saved states are evicted before any model
            if used + need <= self.memory_budget_bytes:
                entry.size_bytes = need
                return
            victim = self._lru_idle(exclude=entry)
            if victim is not None:
                self._unload_locked(victim, "evictions")
                continue
            pinned = sum(e.size_bytes for e in self._entries.values()
                         if e is not entry and e.state != "unloaded" and e.pinned)
            if need + pinned > self.memory_budget_bytes:
                raise ModelLoadFailed(
                    f"Model {entry.spec.id!r} needs {need:,} bytes but the memory budget is "
                    f"{self.memory_budget_bytes:,} bytes ({pinned:,} held by pinned models): it can never fit. "
                    "Raise memory_budget_bytes or unpin a model.",
                    model=entry.spec.id,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                busy = ", ".join(e.spec.id for e in self._entries.values() if e.busy and e is not entry)
                raise Overloaded(
                    f"Model {entry.spec.id!r} waits for memory held by busy models ({busy}); try again shortly.",
                    retry_after=5.0,
                    model=entry.spec.id,
                )
            self._space.wait(remaining)

    def _limit_prompt_states(self, models_bytes: int | None = None) -> None:
        """Give saved states what the models (holding `models_bytes`, or what they hold now) leave."""
        if models_bytes is None:
            models_bytes = self._used_locked()
        room = self.memory_budget_bytes - models_bytes
        if self.prompt_cache_bytes is not None:
            room = min(room, self.prompt_cache_bytes)
        self.prompt_states.set_limit(room)

    def _lru_idle(self, exclude: _Entry | None = None) -> _Entry | None:
        idle = [e for e in self._entries.values() if e.evictable and e is not exclude]
        return min(idle, key=lambda e: e.last_used) if idle else None

    def _evict_over_budget(self, keep: _Entry) -> None:
        while self._used_locked() > self.memory_budget_bytes:
            victim = self._lru_idle(exclude=keep)
            if victim is None:
                return
            self._unload_locked(victim, "evictions")

    def _unload_locked(self, entry: _Entry, counter: str | None) -> None:
        backend, entry.backend = entry.backend, None
        entry.state = "unloaded"
        entry.size_bytes = 0
        entry.unload_when_idle = False
        entry.epoch += 1
        entry.work.notify_all()  # its idle workers exit
        if counter:
            self._count(counter, entry.spec.id)
        self._space.notify_all()
        if backend is not None:
            backend.close()
        self._limit_prompt_states()

    # ---- workers ---------------------------------------------------------------------------------

    def _work(self, entry: _Entry, epoch: int, backend: Backend) -> None:
        while True:
            with self._lock:
                while entry.epoch == epoch and not entry.queue and not self._closed:
                    entry.work.wait()
                if entry.epoch != epoch or self._closed:
                    return
                gen = entry.queue.popleft()
                entry.running.add(gen)
            started = time.monotonic()
            done = self._serve(backend, gen)
            with self._lock:
                entry.running.discard(gen)
                entry.last_used = time.monotonic()
                entry.last_used_wall = time.time()
                entry.avg_s = 0.8 * entry.avg_s + 0.2 * (entry.last_used - started)
                if done is not None:
                    self._count("tokens", entry.spec.id, done.usage.completion_tokens)
                    self._count("prompt_tokens", entry.spec.id, done.usage.prompt_tokens)
                    if done.reason == "cancelled":
                        self._count("cancelled", entry.spec.id)
                if entry.unload_when_idle and not entry.busy:
                    self._unload_locked(entry, "unloads")
                self._space.notify_all()
                self._tick.notify_all()

    def _serve(self, backend: Backend, gen: Generation) -> Finish | None:
        """Run one generation on this worker's backend, handing each event to the caller."""
        if gen.cancel_event.is_set():
            done = Finish("cancelled")
            gen._put(done)
            return done
        request = gen.request
        started = False
        try:
            n_ctx = self._request_n_ctx(backend, gen)
            n_prompt = backend.count_prompt_tokens(request)
            if n_prompt + (1 if request.generates else 0) > n_ctx:
                whose = f"model {gen.model_id!r} has" if n_ctx == backend.n_ctx else "the request's num_ctx gives"
                need = " (room is needed for at least one new token)" if request.generates else ""
                raise ContextLengthExceeded(
                    f"The prompt is {n_prompt} tokens, but {whose} a context of {n_ctx} "
                    f"tokens{need}. Shorten the prompt.",
                    param=request.prompt_field,
                    prompt_tokens=n_prompt,
                    n_ctx=n_ctx,
                )
            room = n_ctx - n_prompt
            params = request.params
            if n_ctx < backend.n_ctx and request.generates and (params.max_tokens is None or params.max_tokens > room):
                # A smaller per-request context ends the generation where that context is full.
                request = dataclasses.replace(request, params=dataclasses.replace(params, max_tokens=room))
            for ev in fim_end.watch(request, backend.generate, gen.cancel_event):  # FIM ends where the middle does
                if isinstance(ev, Finish):
                    if gen._load_ms:
                        ev = dataclasses.replace(ev, usage=dataclasses.replace(ev.usage, load_ms=gen._load_ms))
                    gen._put(ev)
                    return ev
                gen._put(ev)
                if not started:
                    started = True
                    gen._await_first_token_out()
            done = Finish("error", error="the backend ended without a final event")
        except RouterError as exc:
            if not started:
                gen._put(_Failure(exc))
                return None
            done = Finish("error", error=exc.message)
        except Exception as exc:
            if not started:
                gen._put(_Failure(RouterError(f"Model {gen.model_id!r} failed: {type(exc).__name__}: {exc}")))
                return None
            done = Finish("error", error=f"{type(exc).__name__}: {exc}")
        gen._put(done)
        return done

    def _request_n_ctx(self, backend: Backend, gen: Generation) -> int:
        """The request's context: the model's, or a smaller one it asks for (Ollama `options.num_ctx`)."""
        asked = gen.request.params.num_ctx
        if not asked:
            return backend.n_ctx
        if asked > backend.n_ctx:
            spec = self.catalog.get(gen.model_id)
            how = ("raise its n_ctx in the catalog (and its server's context)"
                   if spec is not None and isinstance(spec.source, UpstreamSource)
                   else f"start the router with a larger context: `route serve --ctx-size {asked}`")
            raise UnsupportedParameter(
                f"`options.num_ctx` {asked} is larger than the context model {gen.model_id!r} runs with "
                f"({backend.n_ctx} tokens). Send num_ctx {backend.n_ctx} or less, or {how}.",
                param="options.num_ctx",
            )
        return asked

    def _cancel(self, gen: Generation) -> None:
        with self._lock:
            entry = self._entries.get(gen.model_id)
            if entry is None or gen not in entry.queue:
                return  # running (the backend sees the event) or already finished
            entry.queue.remove(gen)
            self._count("cancelled", gen.model_id)
            self._space.notify_all()
        gen._put(Finish("cancelled"))

    # ---- idle TTL ----------------------------------------------------------------------------------

    def _reap(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                next_due: float | None = None
                for entry in list(self._entries.values()):
                    if not entry.evictable or entry.unload_when_idle:
                        continue
                    due = entry.last_used + self.idle_ttl_s
                    if due <= now:
                        self._unload_locked(entry, "unloads")
                    else:
                        next_due = due if next_due is None else min(next_due, due)
                self._tick.wait(None if next_due is None else max(0.01, next_due - now))

    # ---- small helpers -------------------------------------------------------------------------------

    def _count(self, name: str, model_id: str, n: int = 1) -> None:
        bucket = self._counts[name]
        bucket[model_id] = bucket.get(model_id, 0) + n

    def _retry_after(self, entry: _Entry) -> float:
        slots = entry.backend.parallel if entry.backend is not None else 1
        return float(min(60, max(1, math.ceil(entry.avg_s * (len(entry.queue) + 1) / slots))))


def _asks_fim(request: Request) -> bool:
    """A FIM request, or a raw completion already templated with some family's FIM tokens."""
    return request.kind == "fim" or (request.kind == "complete" and holds_fim_tokens(request.prompt))

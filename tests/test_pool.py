"""The pool on real tiny GGUF files in real llama-cpp-python: loading, budget, TTL, queues, cancel, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from server_harness import wait_until
from tiny_gguf import write_tiny_gguf

from models.backend import BackendOptions
from models.events import Finish, TextDelta
from models.request import Request, SamplingParams
from models.catalog import Catalog, LocalSource, ModelSpec
from models.errors import (
    ContextLengthExceeded,
    FimNotSupported,
    ModelLoadFailed,
    ModelNotFound,
    Overloaded,
    WeightsUnavailable,
)
from models.pool import Pool

OPTS = BackendOptions(n_threads=1, n_threads_batch=1)
LONG_CTX = 4096  # a long context lets a forced generation run for thousands of tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    out = {name: write_tiny_gguf(d / f"{name}.gguf", seed=i) for i, name in enumerate(["a", "b", "c"])}
    out["nofim"] = write_tiny_gguf(d / "nofim.gguf", fim_family=None, seed=7)
    good = out["a"].read_bytes()
    (d / "truncated.gguf").write_bytes(good[: len(good) // 2])
    out["truncated"] = d / "truncated.gguf"
    out["missing"] = d / "missing.gguf"
    return out


def catalog(files, *names, n_ctx=LONG_CTX) -> Catalog:
    return Catalog(models=[
        ModelSpec(id=n, labels=["fim", "chat"], source=LocalSource(path=files[n]), n_ctx=n_ctx) for n in names
    ])


def make_pool(files, *names, **kw) -> Pool:
    kw.setdefault("memory_budget_bytes", 10**9)
    kw.setdefault("queue_size", 8)
    return Pool(catalog(files, *names), options=OPTS, **kw)


def quick(max_tokens=3) -> Request:
    return Request("complete", prompt="hi", params=SamplingParams(max_tokens=max_tokens, seed=1))


def endless() -> Request:
    """Forced non-EOG token: runs until cancelled (or the long context fills)."""
    return Request("complete", prompt="x", params=SamplingParams(temperature=0.0, logit_bias={100: 100.0}))


def state(pool, model_id):
    return next(s for s in pool.status() if s.id == model_id)


def start_running(pool, model_id):
    """Submit an endless generation and wait until it is producing tokens."""
    gen = pool.submit(model_id, endless())
    it = iter(gen)
    assert isinstance(next(it), TextDelta)
    return gen, it


def one_model_budget(files) -> int:
    with make_pool(files, "a") as probe:
        probe.preload("a", pin=False)
        size = state(probe, "a").size_bytes
    return int(size * 1.5)  # one loaded model fits, two do not


def test_loads_on_first_use_and_reports_load_time(files):
    with make_pool(files, "a") as pool:
        assert state(pool, "a").loaded is False
        text, done = pool.submit("a", quick()).collect()
        assert done.usage.load_ms > 0 and done.usage.completion_tokens >= 1 or done.reason == "stop"
        s = state(pool, "a")
        assert s.loaded and s.capabilities.fim is True and s.size_bytes > files["a"].stat().st_size
        _, done2 = pool.submit("a", quick()).collect()
        assert done2.usage.load_ms == 0
        assert pool.counters.loads == {"a": 1} and pool.counters.requests == {"a": 2}


def test_unknown_model_is_model_not_found(files):
    with make_pool(files, "a") as pool:
        with pytest.raises(ModelNotFound, match="'zzz'"):
            pool.submit("zzz", quick())


def test_evicts_least_recently_used_idle_model_under_budget(files):
    two = int(one_model_budget(files) / 1.5 * 2.5)  # room for two loaded models, not three
    with make_pool(files, "a", "b", "c", memory_budget_bytes=two) as pool:
        pool.submit("a", quick()).collect()
        pool.submit("b", quick()).collect()
        pool.submit("a", quick()).collect()  # a is now more recent than b
        pool.submit("c", quick()).collect()
        loaded = {s.id for s in pool.status() if s.loaded}
        assert loaded == {"a", "c"}
        assert pool.counters.evictions == {"b": 1}
        assert pool.used_bytes <= two


def test_never_evicts_a_generating_model_and_the_load_waits(files):
    budget = one_model_budget(files)
    with make_pool(files, "a", "b", memory_budget_bytes=budget, load_wait_s=0.3) as pool:
        gen_a, _ = start_running(pool, "a")
        with pytest.raises(Overloaded, match="busy models") as err:
            pool.submit("b", quick()).collect()
        assert err.value.retry_after > 0
        assert state(pool, "a").loaded and state(pool, "a").generating == 1
        # With time to wait, b loads as soon as a goes idle.
        pool.load_wait_s = 30
        gen_b = pool.submit("b", quick())
        time.sleep(0.2)
        assert state(pool, "b").loading
        gen_a.cancel()
        _, done = gen_b.collect()
        assert done.reason in ("stop", "length")
        assert not state(pool, "a").loaded and pool.counters.evictions == {"a": 1}


def test_pinned_model_is_never_evicted_and_a_model_that_cannot_fit_fails_clearly(files):
    budget = one_model_budget(files)
    with make_pool(files, "a", "b", memory_budget_bytes=budget) as pool:
        pool.preload("a", pin=True)
        assert state(pool, "a").pinned and state(pool, "a").loaded
        with pytest.raises(ModelLoadFailed, match="can never fit"):
            pool.submit("b", quick()).collect()
        assert state(pool, "a").loaded
        pool.submit("a", quick()).collect()  # a keeps serving
        assert pool.unload("a") is True and not state(pool, "a").loaded
        pool.submit("b", quick()).collect()  # unpinned and unloaded: now b fits


def test_idle_ttl_unloads_idle_models_but_not_pinned_ones(files):
    with make_pool(files, "a", "b", idle_ttl_s=0.3) as pool:
        pool.submit("a", quick()).collect()
        pool.preload("b", pin=True)
        assert state(pool, "a").loaded
        assert wait_until(lambda: not state(pool, "a").loaded, timeout_s=5)
        assert pool.counters.unloads == {"a": 1}
        time.sleep(0.5)
        assert state(pool, "b").loaded
        pool.submit("a", quick()).collect()  # loads again on use
        assert pool.counters.loads["a"] == 2


def test_full_queue_is_overloaded_and_a_queued_request_is_dropped_on_cancel(files):
    with make_pool(files, "a", queue_size=1) as pool:
        running, _ = start_running(pool, "a")
        queued = pool.submit("a", quick())
        with pytest.raises(Overloaded, match="waiting") as err:
            pool.submit("a", quick())
        assert err.value.retry_after >= 1 and pool.counters.rejected == {"a": 1}
        queued.cancel()
        events = list(queued)
        assert events == [Finish("cancelled")]  # dropped: never ran, no tokens
        assert state(pool, "a").queue_depth == 0 and state(pool, "a").generating == 1
        running.cancel()
        assert wait_until(lambda: state(pool, "a").generating == 0)
        assert pool.counters.tokens["a"] > 0 and pool.counters.cancelled == {"a": 2}


def test_cancel_running_stops_within_one_token(files):
    with make_pool(files, "a") as pool:
        gen, it = start_running(pool, "a")
        # Freeze the hand-over while cancelling: tokens made after this point are the overrun.
        with gen._lock:
            produced = 1 + sum(isinstance(x, TextDelta) for x in gen._items)
            gen.cancel()
        rest = list(it)
        done = rest[-1]
        assert done.reason == "cancelled"
        assert done.usage.completion_tokens - produced <= 1
        assert done.usage.completion_tokens < LONG_CTX - 10


def test_a_cold_load_is_not_aborted_when_its_request_goes_away(files):
    with make_pool(files, "a") as pool:
        gen = pool.submit("a", quick())
        gen.cancel()
        assert list(gen) == [Finish("cancelled")]
        assert wait_until(lambda: state(pool, "a").loaded)
        assert pool.counters.loads == {"a": 1} and "a" not in pool.counters.tokens


def test_corrupt_and_missing_files_fail_only_their_model(files):
    with make_pool(files, "a", "truncated", "missing") as pool:
        with pytest.raises(ModelLoadFailed) as err:
            pool.submit("truncated", quick()).collect()
        assert "'truncated'" in err.value.message and "truncated:" in err.value.message
        with pytest.raises(WeightsUnavailable, match="missing"):
            pool.submit("missing", quick()).collect()
        _, done = pool.submit("a", quick()).collect()
        assert done.reason in ("stop", "length")
        bad = state(pool, "truncated")
        assert not bad.loaded and "truncated" in bad.load_error
        assert pool.counters.load_failures == {"truncated": 1, "missing": 1}
        # A later request tries again (the file may have been fixed) and fails the same clear way.
        with pytest.raises(ModelLoadFailed):
            pool.submit("truncated", quick()).collect()


def test_missing_file_with_a_plain_resolver_is_model_load_failed(files):
    pool = Pool(catalog(files, "missing"), resolve=lambda spec: spec.source.path, options=OPTS,
                memory_budget_bytes=10**9, queue_size=4)
    with pool:
        with pytest.raises(ModelLoadFailed, match="'missing'.*does not exist"):
            pool.submit("missing", quick()).collect()


def test_context_overflow_is_refused_before_any_token(files):
    pool = Pool(catalog(files, "a", n_ctx=128), options=OPTS, memory_budget_bytes=10**9, queue_size=4)
    with pool:
        gen = pool.submit("a", Request("complete", prompt="word " * 200))
        with pytest.raises(ContextLengthExceeded, match="context of 128"):
            next(iter(gen))
        _, done = pool.submit("a", quick()).collect()  # the model keeps serving
        assert done.reason in ("stop", "length")


def test_fim_on_a_model_without_fim_tokens(files):
    with make_pool(files, "nofim") as pool:
        assert state(pool, "nofim").capabilities.fim is None  # unknown before loading
        with pytest.raises(FimNotSupported, match="'nofim'"):
            pool.submit("nofim", Request("fim", prefix="a", suffix="b")).collect()
        assert state(pool, "nofim").capabilities.fim is False
        with pytest.raises(FimNotSupported):  # now known without any work
            pool.submit("nofim", Request("fim", prefix="a", suffix="b"))
        with pytest.raises(FimNotSupported):  # a client's pre-templated FIM prompt too
            pool.submit("nofim", Request("complete", prompt="<fim_prefix>a<fim_suffix>b<fim_middle>"))
        _, done = pool.submit("nofim", quick()).collect()  # plain completions are fine
        assert done.reason in ("stop", "length")


def test_requests_from_many_threads_are_served_one_at_a_time(files):
    with make_pool(files, "a") as pool:
        results = []

        def client():
            results.append(pool.submit("a", quick(5)).collect()[1])

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 6 and all(d.reason in ("stop", "length") for d in results)
        assert pool.counters.requests == {"a": 6} and pool.counters.loads == {"a": 1}


def test_async_iteration_and_abandoning_it_cancels(files):
    async def scenario(pool):
        texts = [ev async for ev in pool.submit("a", quick(4))]
        assert isinstance(texts[-1], Finish) and all(isinstance(e, TextDelta) for e in texts[:-1])

        gen = pool.submit("a", endless())
        agen = gen.__aiter__()
        for _ in range(2):
            assert isinstance(await agen.__anext__(), TextDelta)
        await agen.aclose()  # the client went away
        assert gen.cancelled

        gen2 = pool.submit("a", endless())

        async def consume():
            async for _ in gen2:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()  # the ASGI server cancels the handler on disconnect
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gen2.cancelled

    with make_pool(files, "a") as pool:
        asyncio.run(scenario(pool))
        assert wait_until(lambda: state(pool, "a").generating == 0)
        assert pool.counters.cancelled["a"] == 2


def test_abandoning_a_sync_iterator_cancels(files):
    with make_pool(files, "a") as pool:
        gen = pool.submit("a", endless())
        it = iter(gen)
        next(it)
        it.close()
        assert gen.cancelled
        assert wait_until(lambda: state(pool, "a").generating == 0)


def test_close_cancels_everything_and_frees_models(files):
    pool = make_pool(files, "a")
    gen, it = start_running(pool, "a")
    pool.close()
    assert list(it)[-1].reason == "cancelled"
    assert not state(pool, "a").loaded


def test_a_streaming_consumers_first_token_leaves_before_the_next_decode(files, monkeypatch):
    import models.pool as pool_module

    monkeypatch.setattr(pool_module, "FIRST_TOKEN_HANDOFF_S", 30.0)  # wait for the signal, not the cap
    with make_pool(files, "a") as pool:
        pool.preload("a")
        request = Request("complete", prompt="x", params=SamplingParams(
            temperature=0.0, max_tokens=5, logit_bias={100: 100.0}))
        gen = pool.submit("a", request)
        gen.hand_off_first_token()
        events = iter(gen)
        assert isinstance(next(events), TextDelta)
        time.sleep(0.2)  # a free-running worker would have finished all five tokens by now
        assert len(gen._items) == 0
        gen.first_token_sent()
        rest = list(events)
        assert len(rest) == 5 and rest[-1].usage.completion_tokens == 5

        # Not asked for (non-streaming callers, the CLI): no waiting at all, even with a 30 s cap.
        started = time.monotonic()
        text, done = pool.submit("a", request).collect()
        assert done.usage.completion_tokens == 5 and time.monotonic() - started < 10

        # A consumer that goes away while the worker waits releases it at once.
        gen = pool.submit("a", request)
        gen.hand_off_first_token()
        events = iter(gen)
        next(events)
        started = time.monotonic()
        gen.cancel()
        assert list(events)[-1].reason in ("cancelled", "length")
        pool.submit("a", quick()).collect()  # the worker is free again
        assert time.monotonic() - started < 10

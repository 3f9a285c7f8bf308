"""The context a model runs with (models/context_size.py), on real tiny GGUF headers and a real pool."""

from __future__ import annotations

import gguf
import pytest
from tiny_gguf import write_tiny_gguf

from models.backend import BackendOptions
from models.capabilities import declared
from models.catalog import Catalog, LocalSource, ModelSpec, UpstreamSource
from models.context_size import DEFAULT_N_CTX, MIN_N_CTX, resolve_n_ctx
from models.errors import ContextLengthExceeded, UnsupportedParameter
from models.gguf_header import file_kv_cache_bytes
from models.pool import Pool
from models.request import Request, SamplingParams

OPTS = BackendOptions(n_threads=1, n_threads_batch=1)
TRAINED = 32768
# The tiny model's KV cache: 2 layers x 4 KV heads x (16 + 16) dims x 2 bytes (f16) per position.
PER_TOKEN = 2 * 4 * 32 * 2


@pytest.fixture(scope="module")
def long_gguf(tmp_path_factory):
    """A tiny model whose header says it was trained on 32k tokens."""
    return write_tiny_gguf(tmp_path_factory.mktemp("ctx") / "long.gguf", n_ctx=TRAINED)


def spec_for(path, **kw) -> ModelSpec:
    return ModelSpec(id=kw.pop("id", "long"), labels=["chat", "fim"], source=LocalSource(path=path), **kw)


def budget_for(path, tokens: int) -> int:
    return path.stat().st_size + tokens * PER_TOKEN


def test_the_per_token_kv_size_matches_the_header(long_gguf):
    assert file_kv_cache_bytes(long_gguf, 1000) == 1000 * PER_TOKEN


def test_the_trained_context_is_the_default(long_gguf):
    assert resolve_n_ctx(spec_for(long_gguf), long_gguf) == TRAINED
    assert resolve_n_ctx(spec_for(long_gguf), long_gguf, budget_for(long_gguf, TRAINED)) == TRAINED


def test_the_budget_caps_it_to_a_multiple_of_256_and_never_below_the_minimum(long_gguf):
    assert resolve_n_ctx(spec_for(long_gguf), long_gguf, budget_for(long_gguf, 5000)) == 4864
    assert resolve_n_ctx(spec_for(long_gguf), long_gguf, budget_for(long_gguf, 10)) == MIN_N_CTX


def test_the_override_wins_over_the_catalog_and_the_budget(long_gguf):
    assert resolve_n_ctx(spec_for(long_gguf, n_ctx=2048), long_gguf, budget_for(long_gguf, 600), override=1024) == 1024


def test_an_explicit_catalog_context_wins_over_the_trained_one(long_gguf):
    assert resolve_n_ctx(spec_for(long_gguf, n_ctx=2048), long_gguf, budget_for(long_gguf, 600)) == 2048


def test_a_header_without_context_length_falls_back(tmp_path):
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert resolve_n_ctx(spec_for(path), path, 10**9) == DEFAULT_N_CTX
    assert resolve_n_ctx(spec_for(tmp_path / "absent.gguf"), None, 10**9) == DEFAULT_N_CTX


def test_upstream_models_keep_the_catalogs_context():
    up = ModelSpec(id="up", source=UpstreamSource(urls=["http://127.0.0.1:9"]))
    assert resolve_n_ctx(up, None, 10**9, override=1024) == DEFAULT_N_CTX
    assert resolve_n_ctx(up.model_copy(update={"n_ctx": 8192}), None, override=1024) == 8192
    assert declared(up, n_ctx=1024).n_ctx == DEFAULT_N_CTX


def test_the_pool_loads_with_the_context_it_declared_and_counted(long_gguf):
    budget = budget_for(long_gguf, 1000)  # the trained 32k would never fit: the estimate must use the cap
    with Pool(Catalog(models=[spec_for(long_gguf)]), options=OPTS, memory_budget_bytes=budget) as pool:
        assert pool.capabilities("long").n_ctx == 768  # before loading: read from the header
        pool.preload("long", pin=False)
        assert pool.backend("long").n_ctx == 768 == pool.capabilities("long").n_ctx
        assert pool.used_bytes == long_gguf.stat().st_size + 768 * PER_TOKEN <= budget


def test_the_pool_override_sets_every_local_models_context(long_gguf):
    catalog = Catalog(models=[spec_for(long_gguf, n_ctx=4096)])
    with Pool(catalog, options=OPTS, memory_budget_bytes=10**9, n_ctx=1536) as pool:
        assert pool.capabilities("long").n_ctx == 1536
        pool.preload("long", pin=False)
        assert pool.backend("long").n_ctx == 1536


def test_a_requests_num_ctx_limits_its_prompt_and_its_generation(long_gguf):
    catalog = Catalog(models=[spec_for(long_gguf, n_ctx=1024)])
    with Pool(catalog, options=OPTS, memory_budget_bytes=10**9) as pool:
        endless = SamplingParams(temperature=0.0, logit_bias={100: 100.0}, num_ctx=64)
        _, done = pool.submit("long", Request("complete", prompt="x", params=endless)).collect()
        assert done.reason == "length"
        assert done.usage.prompt_tokens + done.usage.completion_tokens == 64
        with pytest.raises(ContextLengthExceeded, match="num_ctx gives a context of 64"):
            pool.submit("long", Request("complete", prompt="word " * 40, params=SamplingParams(num_ctx=64))).collect()
        with pytest.raises(UnsupportedParameter, match=r"--ctx-size 2048") as refused:
            pool.submit("long", Request("complete", prompt="x", params=SamplingParams(num_ctx=2048))).collect()
        assert refused.value.param == "options.num_ctx" and "1024 tokens" in refused.value.message
        _, done = pool.submit("long", Request("complete", prompt="x", params=SamplingParams(max_tokens=3, num_ctx=1024))).collect()
        assert done.usage.completion_tokens <= 3

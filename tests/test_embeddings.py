"""Embeddings end to end: real uvicorn, tiny GGUFs loaded with llama-cpp-python's embedding mode,
the real `openai` (`embeddings.create`) and `ollama` (`embed`, `embeddings`) clients.

The tiny model's vectors mean nothing: these tests assert shape, normalisation, determinism,
that different texts differ, routing and errors, never similarity.
"""

from __future__ import annotations

import base64
import math
import time

import httpx
import numpy as np
import ollama
import openai
import pytest

from server_harness import isolated_env, live_server, wait_idle
from tiny_gguf import write_tiny_gguf

from models.catalog import catalog_from_data
from models.gguf_header import file_kv_cache_bytes
from router.app import create_app
from router.settings import Settings

N_EMBD = 64  # the tiny GGUF's embedding length
N_CTX = 256


def settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)


def local(model_id: str, path, **fields) -> dict:
    return {"id": model_id, "source": {"kind": "local", "path": str(path)}, "n_ctx": N_CTX, **fields}


@pytest.fixture(scope="module")
def embed_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-embed.gguf", fim_family=None, seed=3)


@pytest.fixture(scope="module")
def server(tiny_gguf_nofim, embed_gguf, tmp_path_factory):
    """tiny-chat generates; tiny-embed (mean pooling) and tiny-embed-last embed; tiny-unpooled declares no pooling."""
    with isolated_env(tmp_path_factory.mktemp("embeddings")):
        catalog = catalog_from_data({"models": [
            local("tiny-chat", tiny_gguf_nofim, labels=["chat", "instruct", "code_edit"]),
            local("tiny-embed", embed_gguf, embedding=True, pooling="mean"),
            local("tiny-embed-last", embed_gguf, embedding=True, pooling="last"),
            local("tiny-unpooled", embed_gguf, embedding=True),
        ]})
        with live_server(create_app(settings(), catalog=catalog)) as srv:
            yield srv


@pytest.fixture()
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def norm(vector) -> float:
    return math.sqrt(sum(x * x for x in vector))


def same(a, b) -> bool:
    return np.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- OpenAI


def test_openai_sdk_gets_one_unit_vector_per_input_in_order(oai):
    raw = oai.embeddings.with_raw_response.create(model="tiny-embed", input=["def f(x):", "hello world", "def f(x):"])
    result = raw.parse()  # the SDK asks for base64 and decodes it
    assert raw.headers["x-route-model"] == "tiny-embed" and raw.headers["x-route-label"] == "embedding"
    assert [d.index for d in result.data] == [0, 1, 2] and result.model == "tiny-embed"
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == N_EMBD and abs(norm(v) - 1) < 1e-5 for v in vectors)
    assert same(vectors[0], vectors[2]) and not same(vectors[0], vectors[1])
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_float_and_base64_encodings_carry_the_same_vector(http):
    body = {"model": "tiny-embed", "input": "hello"}
    floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()["data"][0]["embedding"]
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert isinstance(floats, list) and len(floats) == N_EMBD
    assert same(np.frombuffer(base64.b64decode(packed), dtype="<f4"), floats)


def test_auto_or_no_model_is_the_first_embedding_model(http, oai):
    first = oai.embeddings.create(model="tiny-embed", input="x").data[0].embedding
    for body in ({"input": "x"}, {"input": "x", "model": "auto"}):
        r = http.post("/v1/embeddings", json=body)
        assert r.status_code == 200 and r.headers["x-route-model"] == "tiny-embed"
        assert same(r.json()["data"][0]["embedding"], first)
    other = oai.embeddings.create(model="tiny-embed-last", input="x").data[0].embedding
    assert not same(other, first)  # the catalog's pooling is the one used


def test_token_id_inputs(http, oai):
    one = http.post("/v1/embeddings", json={"model": "tiny-embed", "input": [1, 300, 301]}).json()["data"]
    two = http.post("/v1/embeddings", json={"model": "tiny-embed", "input": [[1, 300, 301], [1, 302]]}).json()["data"]
    assert len(one) == 1 and len(two) == 2 and same(one[0]["embedding"], two[0]["embedding"])
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-embed", input=[[1, 99999]])
    assert "vocabulary" in caught.value.message


def test_openai_errors(oai, http):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-chat", input="x")
    assert caught.value.body["param"] == "model" and "not an embedding model" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        oai.embeddings.create(model="no-such-model", input="x")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-embed", input="word " * 400)
    assert caught.value.code == "context_length_exceeded" and caught.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-embed", input=["fine", "word " * 400])
    assert caught.value.body["param"] == "input[1]"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="tiny-embed", input="x", dimensions=32)
    assert caught.value.body["param"] == "dimensions" and "64" in caught.value.message
    assert len(oai.embeddings.create(model="tiny-embed", input="x", dimensions=N_EMBD).data[0].embedding) == N_EMBD
    for body, param in (({"model": "tiny-embed", "input": []}, "input"),
                        ({"model": "tiny-embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
                        ({"model": "tiny-embed", "input": "x", "truncate": True}, "truncate")):
        r = http.post("/v1/embeddings", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_generation_on_an_embedding_model_is_refused(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in caught.value.message


def test_a_gguf_without_pooling_fails_to_load_saying_how_to_fix_it(http):
    r = http.post("/v1/embeddings", json={"model": "tiny-unpooled", "input": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
    assert "pooling: mean" in r.json()["error"]["message"]


def test_models_lists_embedding_models_as_such(oai, oll):
    caps = {m.id: getattr(m, "capabilities", None) for m in oai.models.list().data}
    assert caps["tiny-embed"] == ["embedding"] and "completion" in caps["tiny-chat"]
    shown = oll.show("tiny-embed")
    assert shown.capabilities == ["embedding"] and not shown.template


# ----------------------------------------------------------------------------- Ollama


def test_ollama_embed_gives_unit_vectors_and_counts(oll, oai):
    out = oll.embed(model="tiny-embed", input=["hello", "world"])
    assert out.model == "tiny-embed" and len(out.embeddings) == 2
    assert all(len(v) == N_EMBD and abs(norm(v) - 1) < 1e-5 for v in out.embeddings)
    assert not same(out.embeddings[0], out.embeddings[1])
    assert out.prompt_eval_count > 0 and out.total_duration > 0
    assert same(oll.embed(model="tiny-embed:latest", input="hello").embeddings[0], out.embeddings[0])
    assert same(oai.embeddings.create(model="tiny-embed", input="hello").data[0].embedding, out.embeddings[0])


def test_legacy_ollama_embeddings_are_pooled_not_normalised(oll):
    legacy = oll.embeddings(model="tiny-embed", prompt="hello").embedding
    unit = oll.embed(model="tiny-embed", input="hello").embeddings[0]
    assert len(legacy) == N_EMBD and abs(norm(legacy) - 1) > 1e-3  # as Ollama's /api/embeddings
    assert same(np.asarray(legacy) / norm(legacy), unit)


def test_ollama_truncates_unless_told_not_to(oll, http):
    long = "word " * 400
    assert len(oll.embed(model="tiny-embed", input=long).embeddings[0]) == N_EMBD
    with pytest.raises(ollama.ResponseError) as caught:
        oll.embed(model="tiny-embed", input=long, truncate=False)
    assert caught.value.status_code == 400 and "context" in caught.value.error
    r = http.post("/api/embed", json={"model": "tiny-chat", "input": "x"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = http.post("/api/embed", json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_ollama_empty_input_loads_and_keep_alive_zero_unloads(oll, server):
    def loaded() -> bool:
        return any(st.id == "tiny-embed-last" and st.loaded for st in server.state.pool.status())

    server.state.pool.unload("tiny-embed-last")
    assert oll.embed(model="tiny-embed-last", input="").embeddings == [] and loaded()
    assert oll.embeddings(model="tiny-embed-last", prompt="", keep_alive=0).embedding == [] and not loaded()
    oll.embed(model="tiny-embed-last", input="x", keep_alive=0)  # unloads once answered
    wait_idle(server)
    deadline = time.monotonic() + 5
    while loaded() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not loaded()


# ----------------------------------------------------------------------------- the pool and other setups


def test_embedding_models_share_the_memory_budget(tiny_gguf_nofim, embed_gguf, tmp_path):
    """Room for one model at a time: the embedding model's load evicts the idle chat model, and back."""
    size = max(p.stat().st_size + file_kv_cache_bytes(p, N_CTX) for p in (tiny_gguf_nofim, embed_gguf))
    catalog = catalog_from_data({"models": [
        local("tiny-chat", tiny_gguf_nofim, labels=["chat"]),
        local("tiny-embed", embed_gguf, embedding=True, pooling="mean"),
    ]})
    with isolated_env(tmp_path), live_server(create_app(settings(memory_budget_bytes=int(size * 1.5)),
                                                          catalog=catalog)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        client.embeddings.create(model="tiny-embed", input="x")
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        counters = srv.state.pool.counters
        assert counters.evictions == {"tiny-chat": 1, "tiny-embed": 1}
        assert counters.loads == {"tiny-chat": 2, "tiny-embed": 1}


def test_no_embedding_model_is_a_501_saying_how_to_add_one(tiny_gguf_nofim, tmp_path):
    catalog = catalog_from_data({"models": [local("tiny-chat", tiny_gguf_nofim, labels=["chat"])]})
    with isolated_env(tmp_path), live_server(create_app(settings(), catalog=catalog)) as srv:
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/api/embed", {"model": "tiny-chat", "input": "x"}),
                           ("/api/embeddings", {"prompt": "x"})):
            r = httpx.post(srv.url + path, json=body, timeout=60)
            assert r.status_code == 501 and r.headers["x-should-retry"] == "false", (path, r.text)
            assert "embedding: true" in r.text
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=2, timeout=60)
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="auto", input="x")
        assert caught.value.status_code == 501
        r = httpx.post(srv.url + "/embedding", json={"content": "x"}, timeout=60)  # llama.cpp's native one
        assert r.status_code == 501 and "/v1/embeddings" in r.json()["error"]["message"]


def test_an_upstream_embedding_model_is_forwarded_to_its_v1_embeddings(server, tmp_path):
    """The upstream is a real OpenAI-compatible server: this module's router, serving tiny-embed."""
    catalog = catalog_from_data({"models": [{
        "id": "far-embed", "embedding": True, "n_ctx": N_CTX,
        "source": {"kind": "upstream", "urls": [server.url], "upstream_model": "tiny-embed"},
    }]})
    with isolated_env(tmp_path), live_server(create_app(settings(), catalog=catalog)) as front:
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        far = client.embeddings.create(model="far-embed", input=["hello", "world"])
        near = openai.OpenAI(base_url=server.url + "/v1", api_key="unused").embeddings.create(
            model="tiny-embed", input=["hello", "world"])
        assert [same(a.embedding, b.embedding) for a, b in zip(far.data, near.data)] == [True, True]
        assert far.usage.prompt_tokens == near.usage.prompt_tokens
        legacy = ollama.Client(host=front.url).embed(model="far-embed", input="hello")
        assert same(legacy.embeddings[0], near.data[0].embedding)
        with pytest.raises(openai.BadRequestError) as caught:  # the upstream's 400 keeps its meaning
            client.embeddings.create(model="far-embed", input="word " * 400)
        assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize(("fields", "needle"), [
    ({"embedding": True, "labels": ["chat"]}, "serves no labels"),
    ({"pooling": "mean"}, "embedding models only"),
    ({"embedding": True, "pooling": "max"}, "pooling"),
])
def test_the_catalog_refuses_embedding_fields_that_cannot_work(embed_gguf, fields, needle):
    from models.catalog import CatalogError

    with pytest.raises(CatalogError, match=needle):
        catalog_from_data({"models": [local("m", embed_gguf, **fields)]})

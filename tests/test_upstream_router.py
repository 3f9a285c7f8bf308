"""A mixed catalog through the real router: one label in-process, others on real upstream servers.

Outer router (real uvicorn) -> code_edit: the tiny GGUF in-process
                            -> chat, instruct: llama-cpp-python's own server (api "openai")
                            -> fim: a second instance of our router, spoken to as llama.cpp (/infill)
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from models.catalog import catalog_from_data, catalog_from_files
from router.app import create_app
from router.settings import Settings
from server_harness import isolated_env, live_server
from tiny_gguf import write_tiny_gguf
from upstream_harness import LONG_STREAM_BIAS, LlamaCppServer, free_port


def make_settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)


def mixed_catalog(local_gguf, chat_url: str, fim_url: str, extra: list[dict] = ()):
    return catalog_from_data(
        {
            "models": [
                {"id": "tiny-local", "labels": ["code_edit"], "n_ctx": 2048, "source": {"kind": "local", "path": str(local_gguf)}},
                {
                    "id": "up-fim", "labels": ["fim"], "n_ctx": 2048,
                    "source": {"kind": "upstream", "api": "llama.cpp", "urls": [fim_url], "upstream_model": "fim"},
                },
                {
                    "id": "up-chat", "labels": ["chat", "instruct"], "n_ctx": 2048,
                    "source": {"kind": "upstream", "urls": [chat_url], "parallel": 1},
                },
                {
                    "id": "up-dead", "labels": [], "n_ctx": 2048,
                    "source": {"kind": "upstream", "urls": [f"http://127.0.0.1:{free_port()}"]},
                },
                *extra,
            ]
        }
    )


@pytest.fixture(scope="module")
def chat_upstream(tiny_gguf_nofim, tmp_path_factory):
    server = LlamaCppServer(tiny_gguf_nofim, tmp_path_factory.mktemp("chat-upstream"), n_ctx=2048)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def fim_upstream(tiny_gguf, tmp_path_factory):
    """A second instance of our router serving the tiny Qwen-FIM model: a llama.cpp-style upstream."""
    tmp = tmp_path_factory.mktemp("fim-upstream")
    with isolated_env(tmp):
        catalog = catalog_from_files({"fim": tiny_gguf}, n_ctx=2048)
        with live_server(create_app(make_settings(), catalog=catalog)) as srv:
            yield srv


@pytest.fixture(scope="module")
def router(tiny_gguf, chat_upstream, fim_upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("router")
    with isolated_env(tmp):
        catalog = mixed_catalog(tiny_gguf, chat_upstream.url, fim_upstream.url)
        with live_server(create_app(make_settings(), catalog=catalog)) as srv:
            yield srv


@pytest.fixture()
def oai(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def headers_of(response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-route-")}


def test_a_label_on_an_upstream_streams_with_route_headers(oai, chat_upstream):
    before = chat_upstream.requests_served("/v1/chat/completions")
    with oai.chat.completions.with_streaming_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    ) as response:
        headers = headers_of(response)
        chunks = list(response.parse())
    assert headers["x-route-model"] == "up-chat" and headers["x-route-label"] == "chat"
    assert 0.0 <= float(headers["x-route-confidence"]) <= 1.0
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    assert chat_upstream.requests_served("/v1/chat/completions") == before + 1


def test_auto_routing_headers_agree_with_the_mixed_catalog(oai, router):
    response = oai.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "what is the capital of France?"}], max_tokens=4
    )
    headers = headers_of(response)
    expected = {"code_edit": "tiny-local", "fim": "up-fim", "chat": "up-chat", "instruct": "up-chat"}
    assert headers["x-route-model"] == expected[headers["x-route-label"]]
    completion = response.parse()
    assert completion.model == headers["x-route-model"]
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_in_process_and_upstream_labels_side_by_side(oai, router):
    local = oai.chat.completions.with_raw_response.create(
        model="code_edit", messages=[{"role": "user", "content": "fix this python function"}], max_tokens=4
    )
    remote = oai.completions.with_raw_response.create(model="instruct", prompt="Tell me a story", max_tokens=4)
    assert headers_of(local)["x-route-model"] == "tiny-local"
    assert headers_of(remote)["x-route-model"] == "up-chat"
    status = {s.id: s for s in router.state.pool.status()}
    assert status["tiny-local"].loaded and status["up-chat"].loaded


def test_infill_through_an_upstream_speaking_llama_cpp(router, fim_upstream):
    """llama.vim's body to the router, forwarded to the upstream's /infill and streamed back."""
    body = {
        "input_prefix": "def add(a, b):\n", "input_suffix": "\n", "prompt": "    return ",
        "input_extra": [{"text": "x = 1\n", "filename": "x.py"}], "n_predict": 6, "stream": False,
    }
    before = sum(fim_upstream.state.pool.counters.tokens.values())
    response = httpx.post(router.url + "/infill", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == "up-fim" and response.headers["x-route-label"] == "fim"
    result = response.json()
    assert isinstance(result["content"], str) and result["stop"] is True
    assert result["stop_type"] in ("eos", "limit", "word")
    # The upstream router really generated it (its worker counts tokens just after the last event).
    deadline = time.monotonic() + 10
    while sum(fim_upstream.state.pool.counters.tokens.values()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(fim_upstream.state.pool.counters.tokens.values()) > before


def test_infill_warmup_reaches_the_upstream_and_generates_nothing(router, fim_upstream):
    """llama.vim's ring-buffer warm-up (n_predict 0) is forwarded so the upstream caches the context."""
    body = {
        "input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0,
        "input_extra": [{"text": "class A:\n    x = 1\n", "filename": "a.py", "time": [1, 2]}],
        "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""], "cache_prompt": True,
    }
    response = httpx.post(router.url + "/infill", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == "up-fim"


def test_ollama_generate_streams_ndjson_from_an_upstream(router, chat_upstream):
    before = chat_upstream.requests_served("/v1/completions")
    lines = []
    body = {"model": "instruct", "prompt": "Tell me a story", "options": {"num_predict": 6}}
    with httpx.stream("POST", router.url + "/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["x-route-model"] == "up-chat"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["done_reason"] in ("stop", "length") and lines[-1]["eval_count"] >= 1
    assert chat_upstream.requests_served("/v1/completions") + chat_upstream.requests_served("/v1/chat/completions") > before


def test_upstream_down_is_a_502_in_the_callers_dialect(oai, router):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="up-dead", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unavailable"
    assert "127.0.0.1" in info.value.body["message"]
    ollama_shape = httpx.post(
        router.url + "/api/chat", json={"model": "up-dead", "messages": [{"role": "user", "content": "hi"}]}, timeout=30
    )
    assert ollama_shape.status_code == 502 and isinstance(ollama_shape.json()["error"], str)


def test_upstream_killed_mid_stream_ends_the_stream_with_an_error_event(tiny_gguf, tmp_path):
    long_gguf = write_tiny_gguf(tmp_path / "long.gguf", fim_family="qwen", n_ctx=8192)
    upstream = LlamaCppServer(long_gguf, tmp_path, n_ctx=4096).start()
    try:
        with isolated_env(tmp_path):
            extra = [{"id": "up-long", "labels": [], "n_ctx": 4096, "source": {"kind": "upstream", "urls": [upstream.url]}}]
            catalog = mixed_catalog(tiny_gguf, upstream.url, upstream.url, extra)
            with live_server(create_app(make_settings(), catalog=catalog)) as srv:
                body = {
                    "model": "up-long", "prompt": "x", "max_tokens": 3000, "stream": True,
                    "logit_bias": {str(k): v for k, v in LONG_STREAM_BIAS.items()},
                }
                lines = []
                with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as response:
                    assert response.status_code == 200
                    assert response.headers["x-route-model"] == "up-long"
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            lines.append(line)
                        if len(lines) == 5:
                            threading.Thread(target=upstream.kill).start()
        assert len(lines) > 5
        assert '"error"' in lines[-1] and upstream.url in lines[-1] and "mid-stream" in lines[-1]
    finally:
        upstream.kill()

"""The HTTP server end to end: real uvicorn on 127.0.0.1:0, real tiny GGUF models, real clients.

The tiny models write gibberish: these tests assert structure (status codes, shapes, headers,
finish reasons, usage, stream order, error types), never wording.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from server_harness import isolated_env, live_server, wait_idle

from models.catalog import catalog_from_files
from models.upstream_backend import UPSTREAM_USER_AGENT
from router.app import create_app
from router.settings import Settings

# Every special token of the tiny vocabularies (ids 0-2, then FIM and chat tokens after the 256
# bytes): banned when a test needs a generation that cannot end early by itself.
NO_SPECIALS = {str(i): -100 for i in [0, 1, 2, *range(259, 280)]}

LLAMA_VIM_FIM = {  # llama.vim's llama#fim body, as its plugin builds it
    "input_prefix": "import os\n\ndef list_python_files(path):\n",
    "input_suffix": "\n    return files\n",
    "input_extra": [{"text": "def helper():\n    pass\n", "time": [1732000000, 123456], "filename": "util.py"}],
    "prompt": "    files = ",
    "n_predict": 16,
    "stop": [],
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.90,
    "stream": False,
    "samplers": ["top_k", "top_p", "infill"],
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 250,
    "response_fields": [
        "content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
        "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
        "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached",
    ],
}

LLAMA_VIM_RING_UPDATE = {  # llama.vim's background warm-up with new extra context
    "input_prefix": "", "input_suffix": "",
    "input_extra": [{"text": "class A:\n    x = 1\n", "time": [1732000000, 5], "filename": "a.py"}],
    "prompt": "", "n_predict": 0, "temperature": 0.0, "stream": False, "samplers": [], "cache_prompt": True,
    "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""],
}

LLAMA_VSCODE_FIM = {  # llama.vscode's createRequestPayload(false, ...): no `model`
    "input_prefix": "function add(a, b) {\n", "input_suffix": "\n}\n",
    "input_extra": [{"text": "const x = 1;\n", "filename": "x.js"}],
    "prompt": "  return ", "n_predict": 12, "top_k": 40, "top_p": 0.99, "stream": False,
    "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 2,
    "t_max_prompt_ms": 500, "t_max_predict_ms": 500,
}

LLAMA_VSCODE_WARMUP = {  # llama.vscode's createRequestPayload(true, ...)
    "input_prefix": "", "input_suffix": "", "input_extra": [{"text": "let y = 2;\n", "filename": "y.js"}],
    "prompt": "", "n_predict": 0, "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1,
}


def make_settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_gguf_nofim, tmp_path_factory):
    """code_edit + fim -> tiny-qwen (has FIM tokens); chat + instruct -> tiny-nofim."""
    tmp = tmp_path_factory.mktemp("server")
    with isolated_env(tmp):
        catalog = catalog_from_files(
            {"code_edit": tiny_gguf, "fim": tiny_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim}, n_ctx=2048
        )
        app = create_app(make_settings(max_body_bytes=1_000_000), catalog=catalog)
        with live_server(app) as srv:
            yield srv


@pytest.fixture()
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture()
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)




def pool_tokens(server, model_id: str) -> int:
    return server.state.pool.counters.tokens.get(model_id, 0)


# ----------------------------------------------------------------------------- OpenAI


def test_openai_chat_non_streaming_with_route_headers(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Tell me about the weather in Paris."}], max_tokens=6
    )
    chat = raw.parse()
    assert raw.headers["x-route-label"] in {"chat", "instruct"}
    assert raw.headers["x-route-model"] == "tiny-nofim" == chat.model
    assert 0.0 <= float(raw.headers["x-route-confidence"]) <= 1.0
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in {"stop", "length"}
    assert chat.usage.completion_tokens <= 6 and chat.usage.prompt_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_openai_chat_streaming_ends_with_usage_and_done(oai, http):
    stream = oai.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}, logit_bias=NO_SPECIALS,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # five tokens of gibberish
    raw = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                  "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-route-model"] == "tiny-nofim"
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_openai_label_forces_model_and_concrete_id_bypasses(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model="code_edit", messages=[{"role": "user", "content": "hello"}], max_tokens=2)
    assert (raw.headers["x-route-label"], raw.headers["x-route-model"]) == ("code_edit", "tiny-qwen")
    raw = oai.chat.completions.with_raw_response.create(
        model="tiny-qwen", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=2)
    assert raw.headers["x-route-model"] == "tiny-qwen"
    assert raw.headers["x-route-label"] in {"chat", "instruct"}  # still classified, for headers and metrics


def test_openai_completions_plain_and_fim_suffix(oai):
    done = oai.completions.create(model="auto", prompt="The quick brown fox", max_tokens=4)
    assert done.object == "text_completion" and done.choices[0].finish_reason in {"stop", "length"}
    raw = oai.completions.with_raw_response.create(
        model="auto", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", max_tokens=6)
    assert raw.headers["x-route-label"] == "fim" and raw.headers["x-route-model"] == "tiny-qwen"
    assert raw.parse().usage.completion_tokens <= 6
    chunks = list(oai.completions.create(model="fim", prompt="x = ", suffix="\n", max_tokens=3, stream=True,
                                         logit_bias=NO_SPECIALS))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)


def test_openai_models_lists_auto_labels_and_models(oai):
    ids = [m.id for m in oai.models.list()]
    assert ids[:5] == ["auto", "code_edit", "fim", "chat", "instruct"]
    assert {"tiny-qwen", "tiny-nofim"} <= set(ids)
    assert oai.models.retrieve("tiny-qwen").id == "tiny-qwen"


def test_openai_unknown_model_is_404_never_a_fallback(oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="mistral-large", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        # No model here renders tools (ChatML templates): refused, naming the field.
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer",
                                                                                          "minimum": 3}}}},
         "response_format"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"dry_multiplier": 0.8}, "dry_multiplier"),
    ],
)
def test_openai_refuses_unhonoured_parameters_by_name(oai, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], extra_body=extra)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param


def test_openai_unknown_argument_is_refused_by_name(http):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "temprature": 0.1})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "temprature"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "assistant", "content": "I start"}], "messages"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
            ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
    ],
)
def test_openai_bad_messages_name_the_field(http, messages, param):
    r = http.post("/v1/chat/completions", json={"messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_openai_context_length_exceeded(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model="instruct", prompt="x " * 3000, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"


def test_fim_forced_onto_a_model_without_fim_tokens_is_501(oai):
    with pytest.raises(openai.APIStatusError) as caught:
        oai.completions.create(model="tiny-nofim", prompt="a = ", suffix="\n", max_tokens=2)
    assert caught.value.status_code == 501
    assert caught.value.body["code"] == "not_supported"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
        (json.dumps({"messages": [{"role": "user", "content": "a\u0000b"}]}).encode(), "NUL"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_malformed_bodies_are_400_in_openai_shape(http, body, needle):
    r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert needle in err["message"]


# ----------------------------------------------------------------------------- llama.cpp


def test_llama_vim_infill_body_gets_flattened_response_fields(http):
    r = http.post("/infill", content=json.dumps(LLAMA_VIM_FIM), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(LLAMA_VIM_FIM["response_fields"])
    assert isinstance(body["content"], str) and body["timings/prompt_n"] > 0
    assert r.headers["x-route-label"] == "fim" and r.headers["x-route-model"] == "tiny-qwen"


def test_llama_vim_ring_update_warmup_generates_nothing(http, server):
    before = pool_tokens(server, "tiny-qwen")
    r = http.post("/infill", json=LLAMA_VIM_RING_UPDATE)
    assert r.status_code == 200, r.text
    assert r.json() == {}  # response_fields [""] selects nothing, as llama-server answers
    wait_idle(server)
    assert pool_tokens(server, "tiny-qwen") == before


def test_llama_vscode_bodies_without_model(http):
    r = http.post("/infill", json=LLAMA_VSCODE_FIM)
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("content", "stop", "stop_type", "tokens_cached", "truncated", "timings", "model", "generation_settings"):
        assert key in body
    assert body["model"] == "tiny-qwen" and body["stop"] is True
    assert body["timings"]["predicted_n"] <= 12
    warm = http.post("/infill", json=LLAMA_VSCODE_WARMUP)
    assert warm.status_code == 200 and warm.json()["content"] == ""


def test_infill_n_cmpl_answers_an_array_and_range_is_checked(http):
    r = http.post("/infill", json={**LLAMA_VSCODE_FIM, "n_cmpl": 2, "n_predict": 3})
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list) and len(r.json()) == 2
    assert [c["index"] for c in r.json()] == [0, 1]
    for bad in (0, 99):
        r = http.post("/infill", json={**LLAMA_VSCODE_FIM, "n_cmpl": bad})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == 400 and "n_cmpl" in r.json()["error"]["message"]


def test_infill_missing_prefix_is_400_in_llamacpp_shape(http):
    r = http.post("/infill", json={"input_suffix": "x"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"code", "message", "type"} and "input_prefix" in err["message"]


def test_completion_streams_sse_content_then_stop(http):
    with http.stream("POST", "/completion", json={"prompt": "<|fim_prefix|>a = <|fim_suffix|>\n<|fim_middle|>",
                                                    "n_predict": 4, "stream": True,
                                                    "logit_bias": [[int(k), -100] for k in NO_SPECIALS]}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert all(e["stop"] is False and "content" in e for e in events[:-1])
    assert events[-1]["stop"] is True and events[-1]["stop_type"] == "limit"
    # A token that ends inside a UTF-8 character (the tiny model samples byte tokens) is held back
    # until the character is whole, so there may be fewer chunks than tokens, never more.
    assert events[-1]["timings"]["predicted_n"] == 4 >= len(events) - 1 >= 1


def test_health_and_props(http):
    assert http.get("/health").json()["status"] == "ok"
    props = http.get("/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 2048
    assert props["model"] == "tiny-qwen" and props["total_slots"] >= 1
    assert {"model_path", "chat_template", "modalities"} <= set(props)
    assert http.get("/props", params={"model": "tiny-nofim", "autoload": "false"}).json()["model"] == "tiny-nofim"
    http.post("/infill", json=LLAMA_VSCODE_WARMUP)  # loaded: the GGUF's own template is reported
    assert "<|im_start|>" in http.get("/props").json()["chat_template"]


# ----------------------------------------------------------------------------- Ollama


def test_ollama_discovery_endpoints(http, oll):
    assert http.get("/").text == "Ollama is running"
    assert http.get("/api/version").json()["version"]
    names = [m.model for m in oll.list().models]
    assert names[0] == "auto" and {"fim", "tiny-qwen", "tiny-nofim"} <= set(names)
    shown = oll.show("fim")
    assert ".Suffix" in shown.template and "insert" in shown.capabilities
    assert "num_ctx 2048" in shown.parameters
    plain = oll.show("tiny-nofim")
    assert ".Suffix" not in plain.template and "insert" not in plain.capabilities
    assert isinstance(oll.ps().models, list)


def test_ollama_generate_fim_with_suffix_and_streaming(oll):
    out = oll.generate(model="auto", prompt="def square(x):\n    return ", suffix="\n", options={"num_predict": 4})
    assert out.done and out.done_reason in {"stop", "length"} and out.eval_count <= 4
    assert out.model == "tiny-qwen"
    parts = list(oll.generate(model="fim:latest", prompt="x = ", suffix="\n", stream=True,
                              options={"num_predict": 3}))
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert parts[-1].prompt_eval_count > 0 and parts[-1].total_duration > 0


def test_ollama_templated_fim_prompt_without_raw_goes_raw(http):
    """Twinny posts a pre-templated FIM prompt without `raw`: it must reach the FIM model as is."""
    r = http.post("/api/generate", json={"model": "auto", "prompt": "<|fim_prefix|>a = <|fim_suffix|>\n<|fim_middle|>",
                                          "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200
    assert r.headers["x-route-label"] == "fim" and r.json()["model"] == "tiny-qwen"


def test_ollama_chat_streaming_and_not(oll):
    reply = oll.chat(model="chat", messages=[{"role": "user", "content": "hello"}], options={"num_predict": 3})
    assert reply.message.role == "assistant" and reply.done and reply.eval_count <= 3
    parts = list(oll.chat(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
                          options={"num_predict": 3}))
    assert parts[-1].done and parts[-1].done_reason in {"stop", "length"}


def test_ollama_errors_are_ollama_shaped(oll, http):
    with pytest.raises(ollama.ResponseError) as caught:
        oll.generate(model="llama3:8b", prompt="hi")
    assert caught.value.status_code == 404
    r = http.post("/api/generate", json={"model": "auto", "prompt": "hi", "options": {"num_predictt": 3}})
    assert r.status_code == 400 and isinstance(r.json()["error"], str) and "num_predictt" in r.json()["error"]
    r = http.post("/api/generate", json={"model": "auto", "prompt": "hi", "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


def test_ollama_num_ctx_is_honoured_or_refused(oll, http):
    """The models here run with 2048 tokens: a larger num_ctx is refused, a smaller one is the request's limit."""
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "stream": False}
    r = http.post("/api/chat", json={**chat, "options": {"num_ctx": 8192}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "options.num_ctx" in error and "2048" in error and "--ctx-size 8192" in error
    with pytest.raises(ollama.ResponseError) as caught:  # streaming: refused before any line
        list(oll.chat(model="chat", messages=chat["messages"], stream=True, options={"num_ctx": 8192}))
    assert caught.value.status_code == 400 and "options.num_ctx" in caught.value.error
    long = [{"role": "user", "content": "word " * 60}]  # fits 2048, not 64
    r = http.post("/api/chat", json={**chat, "messages": long, "options": {"num_ctx": 64}})
    assert r.status_code == 400 and "context of 64" in r.json()["error"]
    reply = oll.chat(model="chat", messages=chat["messages"], options={"num_ctx": 1024, "num_predict": 3})
    assert reply.done and reply.eval_count <= 3
    short = oll.chat(model="chat", messages=chat["messages"], options={"num_ctx": 64, "temperature": 0})
    assert short.done and short.prompt_eval_count + short.eval_count <= 64


def test_ollama_empty_prompt_loads_and_keep_alive_zero_unloads(oll, server):
    loaded = oll.generate(model="tiny-nofim", prompt="")
    assert loaded.done_reason == "load"
    assert any(st.id == "tiny-nofim" and st.loaded for st in server.state.pool.status())
    unloaded = oll.generate(model="tiny-nofim", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert not any(st.id == "tiny-nofim" and st.loaded for st in server.state.pool.status())


# ----------------------------------------------------------------------------- router's own


def test_route_endpoint_decides_without_generating(http, server):
    before = pool_tokens(server, "tiny-qwen") + pool_tokens(server, "tiny-nofim")
    r = http.post("/v1/route", json={"endpoint": "/infill", "body": {"input_prefix": "a", "input_suffix": "b"}})
    assert r.status_code == 200
    d = r.json()
    assert (d["label"], d["model"]) == ("fim", "tiny-qwen") and d["reasons"] and 0 <= d["confidence"] <= 1
    bare = http.post("/v1/route", json={"messages": [{"role": "user", "content": "hi"}], "model": "code_edit"}).json()
    assert (bare["label"], bare["model"]) == ("code_edit", "tiny-qwen")
    assert http.post("/v1/route", json={"messages": [{"role": "user", "content": "x"}], "model": "nope"}).status_code == 404
    assert pool_tokens(server, "tiny-qwen") + pool_tokens(server, "tiny-nofim") == before


def test_metrics_count_requests_tokens_and_pool(http, oai):
    oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    text = http.get("/metrics").text
    assert 'router_requests_total{dialect="openai",endpoint="/v1/chat/completions",label="chat",model="tiny-nofim",status="200"}' in text
    assert "router_request_duration_seconds_bucket" in text
    assert 'router_tokens_generated_total{label="chat",model="tiny-nofim"}' in text
    assert 'router_queue_depth{model="tiny-qwen"}' in text and "router_model_loads_total" in text
    assert 'router_model_evictions_total{model="tiny-qwen"}' in text
    assert "router_classifier_shape_only " in text and "router_fim_superseded_total " in text


def test_metrics_count_prompt_tokens_evaluated_reused_and_saved_states(http, oai):
    def sample(name: str, **labels: str) -> float:
        """The sum of the samples `name` with these labels (every other label's values added up)."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(s.value for family in text_string_to_metric_families(http.get("/metrics").text)
                   for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    session = [{"role": "user", "content": "a long agent prompt " * 40}]
    other = [{"role": "user", "content": "another client entirely " * 30}]
    reused = sample("router_prompt_tokens_reused_total", model="tiny-nofim")
    evaluated = sample("router_prompt_tokens_evaluated_total", model="tiny-nofim")
    first = oai.chat.completions.create(model="chat", messages=session, max_tokens=2, temperature=0)
    between = oai.chat.completions.create(model="chat", messages=other, max_tokens=2, temperature=0)
    again = oai.chat.completions.create(model="chat", messages=session, max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 8
    assert sample("router_prompt_tokens_reused_total", model="tiny-nofim") - reused \
        == sum(r.usage.prompt_tokens_details.cached_tokens for r in (first, between, again))
    assert sample("router_prompt_tokens_evaluated_total", model="tiny-nofim") - evaluated >= first.usage.prompt_tokens
    assert sample("router_prompt_states_total", event="restored") >= 1
    assert sample("router_prompt_states_bytes") > 0 and sample("router_prompt_eval_seconds_count") >= 3


def test_unknown_path_and_unoffered_endpoint_keep_the_dialect_shape(http):
    r = http.get("/api/nothing")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = http.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 501 and r.json()["error"]["code"] == "not_supported"


# ----------------------------------------------------------------------------- cancellation


def test_mid_stream_disconnect_stops_the_generation(server):
    before = pool_tokens(server, "tiny-qwen")
    body = {"model": "tiny-qwen", "prompt": "a", "max_tokens": 1900, "stream": True, "logit_bias": NO_SPECIALS}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        # leaving the block closes the connection mid-stream
    wait_idle(server)
    generated = pool_tokens(server, "tiny-qwen") - before
    assert 0 < generated < 1900
    assert server.state.pool.counters.cancelled.get("tiny-qwen", 0) >= 1


@pytest.mark.parametrize("agent, other_document, superseded", [
    ("llama.vscode-test", False, True),  # the same editor typing on: the older request is dropped
    ("llama.vscode-test", True, False),  # another window with the same User-Agent: both answered
    (UPSTREAM_USER_AGENT, False, False),  # a router in front of us speaks for many editors
])
def test_newer_fim_request_from_the_same_client_supersedes_the_older(server, agent, other_document, superseded):
    slow = {**LLAMA_VSCODE_FIM, "n_predict": 1900, "t_max_predict_ms": None, "logit_bias": [[int(k), -100] for k in NO_SPECIALS]}
    newer = {**LLAMA_VSCODE_FIM, "n_predict": 2}
    if other_document:
        newer["input_prefix"] = "// another file\n" + newer["input_prefix"]
    results: dict[str, dict] = {}
    headers = {"user-agent": agent}

    def first() -> None:
        with httpx.Client(base_url=server.url, timeout=60, headers=headers) as client:
            results["old"] = client.post("/infill", json=slow).json()

    superseded_before = server.state.superseder.superseded
    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(m.generating for m in server.state.pool.status()) and time.monotonic() < deadline:
        time.sleep(0.005)
    with httpx.Client(base_url=server.url, timeout=60, headers=headers) as client:
        results["new"] = client.post("/infill", json=newer).json()
    thread.join(timeout=60)
    assert results["new"]["timings"]["predicted_n"] <= 2
    if superseded:
        assert server.state.superseder.superseded == superseded_before + 1
        assert results["old"]["timings"]["predicted_n"] < 1900
    else:
        assert server.state.superseder.superseded == superseded_before
        assert results["old"]["timings"]["predicted_n"] >= 100  # ran to its limit: specials are banned


# ----------------------------------------------------------------------------- security and limits


def test_body_limit_413_in_each_dialect(http):
    big = "x" * 1_100_000
    r = http.post("/v1/completions", json={"prompt": big})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = http.post("/api/generate", json={"prompt": big})
    assert r.status_code == 413 and isinstance(r.json()["error"], str)
    r = http.post("/infill", json={"input_prefix": big, "input_suffix": ""})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413

    def chunks():  # no Content-Length: counted while reading
        for _ in range(12):
            yield b"x" * 100_000

    r = http.post("/completion", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_api_key_required_when_configured(tiny_gguf, tmp_path):
    with isolated_env(tmp_path):
        app = create_app(make_settings(api_key="s3cret"), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=512))
        with live_server(app) as srv:
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
            good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
            assert "auto" in [m.id for m in good.models.list()]
            r = httpx.post(srv.url + "/api/generate", json={"prompt": "x"})
            assert r.status_code == 401 and isinstance(r.json()["error"], str)
            assert httpx.get(srv.url + "/health").status_code == 200


def test_refuses_non_loopback_bind_without_api_key(tiny_gguf, tmp_path):
    from router.security import InsecureBind

    with isolated_env(tmp_path):
        catalog = catalog_from_files({"fim": tiny_gguf}, n_ctx=512)
        with pytest.raises(InsecureBind, match="API key"):
            create_app(make_settings(host="0.0.0.0"), catalog=catalog)
        create_app(make_settings(host="0.0.0.0", api_key="k"), catalog=catalog)  # with a key it may


def test_cors_only_for_configured_origins(tiny_gguf, tmp_path):
    with isolated_env(tmp_path):
        app = create_app(make_settings(cors_origins=["http://allowed.example"]),
                         catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=512))
        with live_server(app) as srv:
            pre = {"access-control-request-method": "POST"}
            ok = httpx.options(srv.url + "/v1/chat/completions", headers={"origin": "http://allowed.example", **pre})
            assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
            bad = httpx.options(srv.url + "/v1/chat/completions", headers={"origin": "http://evil.example", **pre})
            assert "access-control-allow-origin" not in bad.headers


def test_tampered_classifier_artifact_falls_back_to_shape_rules_loudly(tiny_gguf, tmp_path, caplog):
    bad = tmp_path / "tampered.skops"
    bad.write_bytes(b"definitely not a skops file")
    with isolated_env(tmp_path):
        app = create_app(make_settings(classifier_artifact=bad), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=512))
        assert "shape only" in caplog.text
        with live_server(app) as srv:
            health = httpx.get(srv.url + "/health").json()
            assert health["classifier"] == "shape_only" and health["classifier_warning"]
            assert "router_classifier_shape_only 1.0" in httpx.get(srv.url + "/metrics").text
            r = httpx.post(srv.url + "/v1/route", json={"endpoint": "/infill", "body": {"input_prefix": "a", "input_suffix": ""}})
            assert r.json()["label"] == "fim"


def test_model_that_fails_to_load_is_503_naming_it_while_others_serve(tiny_gguf, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(Path(tiny_gguf).read_bytes()[:1000])  # truncated
    with isolated_env(tmp_path):
        app = create_app(make_settings(), catalog=catalog_from_files({"fim": tiny_gguf, "chat": broken}, n_ctx=512))
        with live_server(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert caught.value.status_code == 503 and "broken" in caught.value.message
            ok = client.completions.create(model="fim", prompt="a", suffix="b", max_tokens=2)
            assert ok.choices[0].finish_reason in {"stop", "length"}


def test_editor_killing_a_non_streaming_request_cancels_it(server):
    """llama.vim kills curl on every keystroke: a vanished non-streaming /infill client stops its work."""
    wait_idle(server)
    before = pool_tokens(server, "tiny-qwen")
    cancelled = server.state.pool.counters.cancelled.get("tiny-qwen", 0)
    slow = {**LLAMA_VIM_FIM, "n_predict": 1900, "t_max_predict_ms": None,
            "logit_bias": [[int(k), -100] for k in NO_SPECIALS], "response_fields": None,
            "fim_trim": False}  # the whole 1900 tokens unless cancelled (the router would end the middle first)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/infill", json=slow, headers={"user-agent": "curl/8.5.0"}, timeout=0.3)
    wait_idle(server)
    assert server.state.pool.counters.cancelled.get("tiny-qwen", 0) == cancelled + 1
    assert pool_tokens(server, "tiny-qwen") - before < 1900


def test_one_model_serves_every_label_and_says_so(tiny_gguf, tmp_path):
    with isolated_env(tmp_path):
        app = create_app(make_settings(), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=512))
        with live_server(app) as srv:
            d = httpx.post(srv.url + "/v1/route", json={"messages": [{"role": "user", "content": "Tell me a joke."}]}).json()
            assert d["model"] == "tiny-qwen" and any("answers" in r for r in d["reasons"])

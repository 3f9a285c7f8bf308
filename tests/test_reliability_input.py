"""Hostile and broken input, in every dialect where it applies: a clear 4xx in the dialect's own
error shape (router/errors.py), never a 5xx, never a traceback, and the server keeps serving.

A real uvicorn on 127.0.0.1:0 serves two tiny GGUF models (gibberish text: structure only).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import httpx
import pytest

from server_harness import isolated_env, live_server

from models.catalog import catalog_from_files
from router.errors import dialect_for_path
from router.app import create_app
from router.settings import Settings


def load_bench(name: str):
    """bench/NAME.py as a module (bench/ is not a package, and must not shadow ours on sys.path)."""
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = load_bench("fuzz")
error_shape_problem = fuzz.error_shape_problem

N_CTX = 256
BODY_LIMIT = 1_000_000
LONG = "lorem ipsum " * 200  # ~2,400 byte-level tokens: far over N_CTX

# One minimal valid body per generating endpoint (tiny outputs).
VALID = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"prompt": "a", "max_tokens": 2},
    "/infill": {"input_prefix": "a", "input_suffix": "b", "n_predict": 2},
    "/completion": {"prompt": "a", "n_predict": 2},
    "/api/generate": {"prompt": "hi", "stream": False, "options": {"num_predict": 2}},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 2}},
}
POST_PATHS = [*VALID, "/api/show", "/v1/route"]


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_gguf_nofim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability-input")
    with isolated_env(tmp):
        catalog = catalog_from_files(
            {"code_edit": tiny_gguf, "fim": tiny_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim}, n_ctx=N_CTX
        )
        settings = Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, max_body_bytes=BODY_LIMIT)
        with live_server(create_app(settings, catalog=catalog)) as srv:
            yield srv


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_error(r: httpx.Response, path: str, status: int, *, needle: str | None = None,
                 code: str | None = None, param: str | None = None) -> dict | str:
    """`r` is a `status` error in the dialect of `path`; returns the error object."""
    assert r.status_code == status, f"{path}: {r.status_code} {r.text[:300]}"
    body = r.json()
    problem = error_shape_problem(path, status, body)
    assert problem is None, f"{path}: {problem}"
    err = body["error"]
    message = err if isinstance(err, str) else err["message"]
    if needle is not None:
        assert needle.lower() in message.lower(), f"{path}: {needle!r} not in {message!r}"
    if dialect_for_path(path) == "openai":
        if code is not None:
            assert err["code"] == code, err
        if param is not None:
            assert err["param"] == param, err
    elif param is not None:
        assert param in message, f"{path}: the message should name {param!r}: {message!r}"
    return err


def post_raw(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"content-type": "application/json"})


# ----------------------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"messages": [', "JSON"),
        (b"{'single': 'quotes'}", "JSON"),
        (b'{"prompt": "a"} trailing', "JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"just a string"', "JSON object"),
        (b"null", "JSON object"),
    ],
    ids=["truncated", "single-quotes", "trailing-garbage", "array", "string", "null"],
)
def test_malformed_json_is_400_in_dialect_shape(http, path, content, needle):
    assert_error(post_raw(http, path, content), path, 400, needle=needle)


@pytest.mark.parametrize("path", POST_PATHS)
def test_invalid_utf8_is_400(http, path):
    body = b'{"prompt": "\xff\xfe\xc3\x28", "input_prefix": "\xc0\xaf", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    assert_error(post_raw(http, path, body), path, 400, needle="UTF-8")


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("escape", ["nul", "lone-surrogate"])
def test_nul_bytes_and_lone_surrogates_are_400_naming_the_field(http, path, escape):
    text = "a\u0000b" if escape == "nul" else "a\ud800b"
    body = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": text}]},
        "/v1/completions": {"prompt": text},
        "/infill": {"input_prefix": text, "input_suffix": ""},
        "/completion": {"prompt": text},
        "/api/generate": {"prompt": text},
        "/api/chat": {"messages": [{"role": "user", "content": text}]},
        "/api/show": {"model": text},
        "/v1/route": {"messages": [{"role": "user", "content": text}]},
    }[path]
    raw = json.dumps(body).encode()  # json.dumps writes \\u0000 and \\ud800 escapes: valid JSON, bad text
    err = assert_error(post_raw(http, path, raw), path, 400, needle="NUL" if escape == "nul" else "surrogate")
    if dialect_for_path(path) == "openai" and path != "/v1/route":
        assert err["param"] in {"messages[0].content", "prompt"}


def test_nul_in_a_json_key_is_refused_too(http):
    r = post_raw(http, "/infill", b'{"input_prefix": "a", "input_suffix": "b", "x\\u0000y": 1}')
    assert_error(r, "/infill", 400, needle="NUL")


# ----------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ("/v1/chat/completions", {"messages": [["user", "hi"]]}, "messages[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": "maybe"}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": [1]}, "temperature"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": {"text": "a"}}, "prompt"),
        ("/v1/completions", {"prompt": "a", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "stop": 7}, "stop"),
        ("/infill", {"input_prefix": 5, "input_suffix": "b"}, "input_prefix"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "input_extra": "ctx"}, "input_extra"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "input_extra": [{"filename": "x.py"}]}, "input_extra"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": "lots"}, "n_predict"),
        ("/completion", {"prompt": ["a", "b"]}, "prompt"),
        ("/completion", {"prompt": None}, "prompt"),
        ("/completion", {"prompt": "a", "response_fields": "content"}, "response_fields"),
        ("/api/generate", {"prompt": "hi", "options": "fast"}, "options"),
        ("/api/generate", {"prompt": 42}, "prompt"),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": "three"}}, "num_predict"),
        ("/api/generate", {"prompt": "hi", "keep_alive": [5]}, "keep_alive"),
        ("/api/chat", {"messages": {"role": "user", "content": "hi"}}, "messages"),
        ("/api/chat", {"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content"),
        ("/api/show", {"model": 5}, "model"),
        ("/v1/route", {"endpoint": 5, "body": {}}, "endpoint"),
        ("/v1/route", {"endpoint": "/infill", "body": "x"}, "body"),
    ],
)
def test_wrong_types_are_400_naming_the_field(http, path, body, param):
    assert_error(http.post(path, json=body), path, 400, param=param)


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": "I speak first and alone"}]}, "messages"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "late system"}]}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
    ids=["missing", "empty", "null", "no-role", "no-content", "assistant-only", "no-user", "ends-with-system", "bad-role"],
)
def test_openai_chat_missing_empty_or_out_of_order_messages(http, body, param):
    assert_error(http.post("/v1/chat/completions", json=body), "/v1/chat/completions", 400, param=param)


def test_openai_unusual_but_legal_orders_are_served(http):
    """Two users in a row, an assistant turn last, a tool turn: a template renders them or a 400 says why."""
    for messages in (
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "system", "content": "s"}, {"role": "system", "content": "t"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": "a"}, {"role": "tool", "content": "result"}],
    ):
        r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert error_shape_problem("/v1/chat/completions", 400, r.json()) is None


def test_ollama_chat_messages(http):
    # Ollama's own semantics: no messages loads the model (done_reason "load"), never an error.
    for body in ({}, {"messages": []}):
        r = http.post("/api/chat", json={**body, "model": "chat", "stream": False})
        assert r.status_code == 200 and r.json()["done_reason"] == "load", r.text
    r = http.post("/api/chat", json={"messages": [{"role": "assistant", "content": "only me"}], "stream": False})
    assert_error(r, "/api/chat", 400, param="messages")
    r = http.post("/api/chat", json={"messages": [{"role": "wizard", "content": "x"}], "stream": False})
    assert_error(r, "/api/chat", 400, param="role")
    r = http.post("/api/chat", json={"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "s"}],
                                     "stream": False, "options": {"num_predict": 2}})
    assert r.status_code in (200, 400), r.text


def test_missing_required_prompt_fields(http):
    assert_error(http.post("/v1/completions", json={"max_tokens": 2}), "/v1/completions", 400, param="prompt")
    assert_error(http.post("/completion", json={"n_predict": 2}), "/completion", 400, param="prompt")
    assert_error(http.post("/infill", json={"input_prefix": "a"}), "/infill", 400, param="input_suffix")
    assert_error(http.post("/api/show", json={}), "/api/show", 400, param="model")


# ----------------------------------------------------------------------------- context and token limits


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/completions", "/infill", "/completion", "/api/generate", "/api/chat"],
)
def test_prompt_longer_than_the_context_is_400(http, path, server):
    body = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": LONG}], "max_tokens": 2},
        "/v1/completions": {"prompt": LONG, "max_tokens": 2},
        "/completion": {"prompt": LONG, "n_predict": 2},
        "/api/generate": {"prompt": LONG, "stream": False, "raw": True, "options": {"num_predict": 2}},
        "/api/chat": {"messages": [{"role": "user", "content": LONG}], "stream": False, "options": {"num_predict": 2}},
    }.get(path)
    if path == "/infill":
        # A FIM prompt is trimmed around the cursor to fit (as llama-server does), not refused.
        r = http.post(path, json={"input_prefix": LONG, "input_suffix": LONG, "n_predict": 2})
        assert r.status_code == 200, r.text
        assert r.json()["timings"]["prompt_n"] < N_CTX
        return
    err = assert_error(http.post(path, json=body), path, 400, needle="context")
    if dialect_for_path(path) == "openai":
        assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**70}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3},
         "max_completion_tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": -2}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 1e300}, "max_tokens"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": -7}, "n_predict"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 10**12}, "n_predict"),
        ("/completion", {"prompt": "a", "n_predict": -2}, "n_predict"),
        ("/completion", {"prompt": "a", "max_tokens": 10**15}, "max_tokens"),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": -5}}, "num_predict"),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": 10**12}}, "num_predict"),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 10**12}}, "num_predict"),
    ],
)
def test_max_tokens_negative_or_huge_is_400(http, path, body, param):
    assert_error(http.post(path, json=body), path, 400, param=param)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "a", "max_tokens": 1_000_000}),
        ("/v1/completions", {"prompt": "a", "max_tokens": -1}),
        ("/completion", {"prompt": "a", "n_predict": -1}),
        ("/api/generate", {"prompt": "a", "raw": True, "stream": False, "options": {"num_predict": -1}}),
    ],
)
def test_large_or_unlimited_max_tokens_stop_at_the_context(http, path, body):
    """A limit the context cannot hold is served up to the context's end, not refused or hung."""
    r = http.post(path, json={**body, "model": "code_edit"})
    assert r.status_code == 200, r.text
    data = r.json()
    produced = {
        "/v1/completions": lambda d: d["usage"]["completion_tokens"],
        "/completion": lambda d: d["tokens_predicted"],
        "/api/generate": lambda d: d["eval_count"],
    }[path](data)
    assert 0 <= produced <= N_CTX


# ----------------------------------------------------------------------------- n / n_cmpl


@pytest.mark.parametrize("n", [0, -1, 2, 129, 10**9, "two"])
def test_openai_n_out_of_range_is_400(http, n):
    for path, base in (("/v1/chat/completions", VALID["/v1/chat/completions"]), ("/v1/completions", VALID["/v1/completions"])):
        assert_error(http.post(path, json={**base, "n": n}), path, 400, param="n")


@pytest.mark.parametrize("n_cmpl", [0, -3, 9, 10**6, "x"])
def test_llamacpp_n_cmpl_out_of_range_is_400(http, n_cmpl):
    for path in ("/infill", "/completion"):
        assert_error(http.post(path, json={**VALID[path], "n_cmpl": n_cmpl}), path, 400, param="n_cmpl")


def test_n_cmpl_with_stream_is_refused(http):
    assert_error(http.post("/infill", json={**VALID["/infill"], "n_cmpl": 2, "stream": True}), "/infill", 400,
                 param="n_cmpl")


# ----------------------------------------------------------------------------- unknown model and fields


@pytest.mark.parametrize("path", list(VALID))
@pytest.mark.parametrize("model", ["mistral-large", "../../etc/passwd", "tiny-qwen/../tiny-nofim", "/tmp/x.gguf", "tiny-qwen.gguf"])
def test_unknown_model_is_404_never_a_fallback(http, path, model):
    err = assert_error(http.post(path, json={**VALID[path], "model": model}), path, 404)
    if dialect_for_path(path) == "openai":
        assert err["code"] == "model_not_found" and err["param"] == "model"


def test_unknown_model_on_show_props_and_models(http):
    assert_error(http.post("/api/show", json={"model": "nope:7b"}), "/api/show", 404)
    assert_error(http.get("/props", params={"model": "nope"}), "/props", 404)
    assert_error(http.get("/v1/models/nope"), "/v1/models/nope", 404)


def test_unknown_fields_per_dialect(http):
    # OpenAI refuses unknown arguments by name, as OpenAI itself does.
    r = http.post("/v1/chat/completions", json={**VALID["/v1/chat/completions"], "frobnicate": 1})
    assert_error(r, "/v1/chat/completions", 400, param="frobnicate")
    r = http.post("/v1/completions", json={**VALID["/v1/completions"], "stream_options": {"include_usage": True, "x": 1}})
    assert_error(r, "/v1/completions", 400)
    # llama-server ignores unknown keys; so do we (llama.vim sends keys that change between versions).
    for path in ("/infill", "/completion"):
        r = http.post(path, json={**VALID[path], "frobnicate": {"deep": [1, 2]}, "id_slot": 0})
        assert r.status_code == 200, r.text
    r = http.post("/infill", json={**VALID["/infill"], "input_extra": [{"text": "x", "time": [1, 2], "extra": None}]})
    assert r.status_code == 200, r.text
    # Ollama ignores unknown top-level keys, refuses unknown options by name.
    r = http.post("/api/generate", json={**VALID["/api/generate"], "frobnicate": True})
    assert r.status_code == 200, r.text
    r = http.post("/api/chat", json={**VALID["/api/chat"], "frobnicate": True,
                                     "messages": [{"role": "user", "content": "hi", "thinking": ""}]})
    assert r.status_code == 200, r.text
    r = http.post("/api/generate", json={**VALID["/api/generate"], "options": {"num_predict": 2, "warp_speed": 9}})
    assert_error(r, "/api/generate", 400, param="warp_speed")


# ----------------------------------------------------------------------------- body size


@pytest.mark.parametrize("path", POST_PATHS)
def test_ten_megabyte_body_is_413_by_the_configured_limit(http, path):
    big = b'{"prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    err = assert_error(post_raw(http, path, big), path, 413, needle=str(BODY_LIMIT))
    if dialect_for_path(path) == "openai":
        assert err["code"] == "payload_too_large"


def test_the_default_body_limit_refuses_ten_megabytes(tmp_path):
    with isolated_env(tmp_path):
        assert Settings().max_body_bytes < 10 * 1024 * 1024 <= Settings(max_body_bytes=16 * 1024 * 1024).max_body_bytes


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/infill", "/api/generate"])
def test_ten_megabyte_body_without_content_length_is_413(http, path):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = http.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, path, 413, needle=str(BODY_LIMIT))


def test_lying_content_length_does_not_bypass_the_limit(server):
    """A small declared length with a huge body: the server reads only what was declared or refuses."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    payload = b'{"prompt": "' + b"x" * (3 * BODY_LIMIT) + b'"}'
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 20\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + payload[:20])
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] in (b"400", b"413"), status_line


def test_body_just_under_the_limit_is_not_413(http):
    r = http.post("/v1/completions", json={"prompt": "y" * (BODY_LIMIT - 1000), "max_tokens": 2, "model": "instruct"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]


# ----------------------------------------------------------------------------- still healthy


def test_server_still_healthy_and_idle_after_all_of_it(http, server):
    assert http.get("/health").json()["status"] == "ok"
    for path, body in VALID.items():
        assert http.post(path, json=body).status_code == 200, path
    deadline = time.monotonic() + 10  # the worker books a finished request just after its answer leaves
    while time.monotonic() < deadline and not all(
            st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status()):
        time.sleep(0.02)
    assert all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status())
    metrics = http.get("/metrics").text
    assert 'status="500"' not in metrics

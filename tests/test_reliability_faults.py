"""Faults while the router runs: clients vanishing mid-stream, model files deleted or truncated,
a missing or tampered classifier artifact. Real uvicorn on 127.0.0.1:0, real tiny GGUF files.

An upstream server killed mid-stream is covered by the upstream engineer's tests
(tests/test_upstream*.py), against a real upstream process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from server_harness import isolated_env, live_server, wait_idle

from models.catalog import catalog_from_files
from router.app import create_app
from router.settings import Settings

# Every special token of the tiny vocabulary (ids 0-2, then FIM and chat tokens after the 256 bytes),
# banned so that a generation cannot end early by itself.
NO_SPECIALS = {str(i): -100 for i in [0, 1, 2, *range(259, 280)]}
NO_SPECIALS_LIST = [[int(k), -100] for k in NO_SPECIALS]
LONG = 1900


def make_settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)




def server_tasks(server) -> int:
    """asyncio tasks alive on the server's event loop (uvicorn's own included)."""
    loop = server.server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=10)


# ----------------------------------------------------------------------------- disconnects


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    with isolated_env(tmp):
        labels = {label: tiny_gguf for label in ("code_edit", "fim", "chat", "instruct")}
        app = create_app(make_settings(), catalog=catalog_from_files(labels, n_ctx=2048))
        with live_server(app) as srv:
            yield srv


# Streaming shapes: OpenAI SSE (chat, completions), llama.cpp SSE (/completion, /infill), Ollama NDJSON.
STREAMS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": LONG, "stream": True,
                              "logit_bias": NO_SPECIALS}),
    ("/v1/completions", {"prompt": "a", "max_tokens": LONG, "stream": True, "logit_bias": NO_SPECIALS}),
    ("/completion", {"prompt": "a", "n_predict": LONG, "stream": True, "logit_bias": NO_SPECIALS_LIST}),
    ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": LONG, "stream": True,
                 "logit_bias": NO_SPECIALS_LIST}),
    # Ollama has no logit_bias: these may, rarely, meet an end-of-generation token by themselves.
    ("/api/generate", {"prompt": "a", "raw": True, "options": {"num_predict": LONG}}),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": LONG}}),
]


def test_a_hundred_mid_stream_disconnects_stop_everything_and_leak_nothing(server):
    pool = server.state.pool
    with httpx.Client(base_url=server.url, timeout=60) as client:  # warm-up: the model loads, workers start
        assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200
    wait_idle(server)
    threads_before = threading.active_count()
    tasks_before = server_tasks(server)
    counters = pool.counters
    tokens_before = sum(counters.tokens.values())
    cancelled_before = sum(counters.cancelled.values())

    must_cancel = 0  # the dialects whose requests ban every end-of-generation token
    for i in range(100):
        path, body = STREAMS[i % len(STREAMS)]
        must_cancel += not path.startswith("/api/")
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", path, json=body) as r:
                assert r.status_code == 200, r.read()
                got = 0
                for line in r.iter_lines():  # two events of a generation that could run for 1,900 tokens
                    got += bool(line.strip())
                    if got == 2:
                        break
        # closing the client drops the connection mid-stream

    wait_idle(server)
    counters = pool.counters
    cancelled = sum(counters.cancelled.values()) - cancelled_before
    generated = sum(counters.tokens.values()) - tokens_before
    assert cancelled >= must_cancel, f"only {cancelled} of {must_cancel} abandoned generations were cancelled"
    assert generated < 100 * LONG // 4, f"{generated} tokens: generations kept running after their clients left"
    assert all(st.loaded for st in pool.status())  # a vanished client never unloads a model
    assert server.state.superseder.inflight == {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (threading.active_count() > threads_before or
                                           server_tasks(server) > tasks_before):
        time.sleep(0.05)
    assert threading.active_count() <= threads_before, [t.name for t in threading.enumerate()]
    assert server_tasks(server) <= tasks_before

    with httpx.Client(base_url=server.url, timeout=60) as client:  # and it still serves
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_disconnect_while_queued_drops_the_request(server):
    """Clients that leave while their request waits behind a long one never reach the model."""
    pool = server.state.pool
    wait_idle(server)
    before = pool.counters
    hog = threading.Thread(target=lambda: httpx.post(
        server.url + "/v1/completions", json={"prompt": "a", "max_tokens": LONG, "logit_bias": NO_SPECIALS}, timeout=60))
    hog.start()
    deadline = time.monotonic() + 10
    while not any(st.generating for st in pool.status()) and time.monotonic() < deadline:
        time.sleep(0.005)
    outcomes: list[object] = []

    def leave_while_queued() -> None:
        try:
            outcomes.append(httpx.post(server.url + "/v1/completions", json={"prompt": "b", "max_tokens": 400}, timeout=0.1))
        except httpx.ReadTimeout as exc:
            outcomes.append(exc)

    # All five at once: the hog takes about a second on a quiet machine, so they must queue behind it.
    leavers = [threading.Thread(target=leave_while_queued) for _ in range(5)]
    for t in leavers:
        t.start()
    for t in leavers:
        t.join(30)
    assert any(st.generating for st in pool.status()), "the long request ended too soon for this test"
    assert len(outcomes) == 5 and all(isinstance(o, httpx.ReadTimeout) for o in outcomes), outcomes
    hog.join(60)
    wait_idle(server)
    after = pool.counters
    assert sum(after.cancelled.values()) - sum(before.cancelled.values()) >= 5
    # only the hog generated anything sizeable
    assert sum(after.tokens.values()) - sum(before.tokens.values()) <= LONG


# ----------------------------------------------------------------------------- model files


@pytest.fixture()
def two_model_server(tiny_gguf, tmp_path):
    """`victim` (chat, instruct) and `survivor` (code_edit, fim): copies the test may damage."""
    victim, survivor = tmp_path / "victim.gguf", tmp_path / "survivor.gguf"
    shutil.copy(tiny_gguf, victim)
    shutil.copy(tiny_gguf, survivor)
    with isolated_env(tmp_path):
        catalog = catalog_from_files({"chat": victim, "instruct": victim, "code_edit": survivor, "fim": survivor},
                                     n_ctx=512)
        with live_server(create_app(make_settings(), catalog=catalog)) as srv:
            yield srv, victim


def ask(client: openai.OpenAI, model: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def assert_503_naming(client: openai.OpenAI, model: str, http_url: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, model)
    assert caught.value.status_code == 503, caught.value
    assert "victim" in caught.value.message
    # the same in the other dialects
    r = httpx.post(http_url + "/api/chat", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                  "stream": False}, timeout=60)
    assert r.status_code == 503 and "victim" in r.json()["error"]
    r = httpx.post(http_url + "/completion", json={"model": model, "prompt": "hi", "n_predict": 2}, timeout=60)
    assert r.status_code == 503 and "victim" in r.json()["error"]["message"] and r.json()["error"]["code"] == 503


@pytest.mark.parametrize("damage", ["deleted", "truncated", "emptied", "garbage"])
def test_model_file_damaged_while_unloaded_is_503_naming_it_and_others_serve(two_model_server, damage):
    srv, victim = two_model_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    assert ask(client, "victim").choices[0].finish_reason in {"stop", "length"}  # it worked
    wait_idle(srv)  # the worker books the finished request just after the answer leaves
    assert srv.state.pool.unload("victim")  # as the idle TTL or keep_alive 0 would
    if damage == "deleted":
        victim.unlink()
    elif damage == "truncated":
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 3)
    elif damage == "emptied":
        victim.write_bytes(b"")
    else:
        victim.write_bytes(os.urandom(4096))

    assert_503_naming(client, "victim", srv.url)
    assert_503_naming(client, "chat", srv.url)  # the label routed to it: no silent fallback either
    assert ask(client, "survivor").choices[0].finish_reason in {"stop", "length"}
    assert ask(client, "code_edit").model == "survivor"
    state = {st.id: st for st in srv.state.pool.status()}
    assert state["victim"].load_error and not state["victim"].loaded
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_model_file_restored_loads_again_without_a_restart(two_model_server, tiny_gguf):
    srv, victim = two_model_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    victim.unlink()
    assert_503_naming(client, "victim", srv.url)
    shutil.copy(tiny_gguf, victim)
    assert ask(client, "victim").model == "victim"


def test_model_file_deleted_while_loaded_keeps_serving_until_unloaded(two_model_server):
    """The loaded weights stay mapped (the inode lives on): it answers; once unloaded it is a clear 503."""
    srv, victim = two_model_server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    ask(client, "victim")
    victim.unlink()
    assert ask(client, "victim").model == "victim"
    wait_idle(srv)
    assert srv.state.pool.unload("victim")
    assert_503_naming(client, "victim", srv.url)
    assert ask(client, "survivor").model == "survivor"


TRUNCATE_WHILE_LOADED = r"""
import shutil, sys, threading
sys.path[:0] = [sys.argv[1]]
from models.backend import BackendOptions
from models.request import Request, SamplingParams
from models.catalog import catalog_from_files
from models.llama_backend import LlamaBackend
path = sys.argv[2]
backend = LlamaBackend(catalog_from_files({"chat": path}, n_ctx=256).models[0], path, BackendOptions(n_threads=1))
request = Request(kind="complete", params=SamplingParams(max_tokens=4), prompt="hello")
list(backend.generate(request, threading.Event()))
with open(path, "r+b") as f:
    f.truncate(1000)
print(list(backend.generate(request, threading.Event()))[-1].reason, flush=True)
"""


# Fixed by loading weights without mmap by default (BackendOptions.use_mmap / ROUTE_USE_MMAP):
# a mapped file truncated under a loaded model used to kill the process with SIGBUS.
def test_model_file_truncated_while_loaded_does_not_kill_the_process(tiny_gguf, tmp_path):
    path = tmp_path / "loaded.gguf"
    shutil.copy(tiny_gguf, path)
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", TRUNCATE_WHILE_LOADED, root, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"process died with {done.returncode} (SIGBUS is -7): {done.stderr[-500:]}"


# ----------------------------------------------------------------------------- classifier artifact


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "untrusted-type"])
def test_classifier_artifact_missing_or_tampered_falls_back_to_shape_rules_loudly(tiny_gguf, tmp_path, caplog, damage):
    from classifier.model import DEFAULT_ARTIFACT

    artifact = tmp_path / "classifier.skops"
    if damage == "garbage":
        artifact.write_bytes(os.urandom(2048))
    elif damage == "truncated":
        artifact.write_bytes(DEFAULT_ARTIFACT.read_bytes()[: DEFAULT_ARTIFACT.stat().st_size // 2])
    elif damage == "untrusted-type":
        import skops.io as sio

        sio.dump({"pipeline": _Untrusted(), "format": "x"}, artifact)
    caplog.set_level(logging.WARNING)
    with isolated_env(tmp_path):
        app = create_app(make_settings(classifier_artifact=artifact),
                         catalog=catalog_from_files({"fim": tiny_gguf, "chat": tiny_gguf}, n_ctx=512))
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING and "shape only" in r.getMessage()]
        assert loud, "the fallback must be logged as a warning"
        assert str(artifact) in loud[0].getMessage() or damage == "missing"
        with live_server(app) as srv:
            health = httpx.get(srv.url + "/health").json()
            assert health["status"] == "ok" and health["classifier"] == "shape_only"
            assert "shape only" in health["classifier_warning"]
            assert httpx.get(srv.url + "/props").json()["classifier"] == "shape_only"
            fim = httpx.post(srv.url + "/v1/route", json={"endpoint": "/infill",
                                                          "body": {"input_prefix": "a", "input_suffix": "b"}}).json()
            assert fim["label"] == "fim"
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert r.status_code == 200 and r.headers["x-route-label"] in {"chat", "instruct", "code_edit"}
    if damage == "untrusted-type":
        assert not _Untrusted.constructed, "an untrusted type from the artifact was instantiated"


class _Untrusted:
    """A type no trusted-types list names: loading it would run arbitrary code paths."""

    constructed = False

    def __setstate__(self, state):
        type(self).constructed = True


# ----------------------------------------------------------------------------- pathological prompts


@pytest.mark.parametrize("run", ["y", " ", "7", "é"])
def test_one_enormous_run_of_a_character_is_a_clear_400(server, run):
    """A 200,000-character run (no word breaks) is tokenized in bounded pieces, then refused as too long."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/v1/completions", json={"prompt": run * 200_000, "max_tokens": 2, "model": "instruct"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        assert client.get("/health").json()["status"] == "ok"


TOKENIZE_RUNS = r"""
import sys
sys.path[:0] = [sys.argv[1]]
from models.backend import BackendOptions
from models.request import Request, SamplingParams
from models.catalog import catalog_from_files
from models.llama_backend import LlamaBackend
path = sys.argv[2]
# n_ctx large enough that the size pre-check lets these through to the tokenizer itself
backend = LlamaBackend(catalog_from_files({"chat": path}, n_ctx=4096).models[0], path, BackendOptions(n_threads=1))
for text in ("y" * 100_000, " " * 100_000, "ab" * 60_000):
    request = Request(kind="complete", params=SamplingParams(max_tokens=2), prompt=text)
    print(backend.count_prompt_tokens(request), flush=True)
"""


@pytest.mark.qwen
def test_real_tokenizer_survives_long_runs(qwen_gguf):
    """llama.cpp's Qwen2 pre-tokenizer segfaulted on ~25k repeated letters or spaces (one request
    could kill the router); the backend now tokenizes such runs in bounded pieces."""
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", TOKENIZE_RUNS, root, str(qwen_gguf)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the tokenizer crashed ({done.returncode}; -11 is SIGSEGV): {done.stderr[-500:]}"
    counts = [int(line) for line in done.stdout.split()]
    assert len(counts) == 3 and all(n > 512 for n in counts)

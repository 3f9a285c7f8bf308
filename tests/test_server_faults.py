"""Faults at the HTTP layer: full queues, clients vanishing over and over, failures after headers.

Real uvicorn, real tiny GGUF, real clients; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from server_harness import isolated_env, live_server

from models.events import Finish, Usage
from models.catalog import catalog_from_files
from router.app import create_app
from router.dialects.llamacpp import LlamaFormat, LlamaSampling
from router.dialects.ollama import OllamaFormat
from router.dialects.openai import OpenAIFormat
from router.settings import Settings
from router.streaming import GenerationFailed

NO_SPECIALS = {str(i): -100 for i in [0, 1, 2, *range(259, 280)]}
LONG = {"model": "tiny-qwen", "prompt": "a", "max_tokens": 1900, "stream": True, "logit_bias": NO_SPECIALS}


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    with isolated_env(tmp):
        settings = Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, queue_size=1)
        app = create_app(settings, catalog=catalog_from_files({"code_edit": tiny_gguf, "fim": tiny_gguf}, n_ctx=2048))
        with live_server(app) as srv:
            yield srv


def wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def idle(server) -> bool:
    return all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status())


def task_count(server) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), server.state.loop).result(timeout=10)


def test_full_queue_is_503_with_retry_after(server):
    """One worker, queue_size 1: of four long requests sent together, the late ones are refused."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    refused: list[openai.APIStatusError] = []
    served: list[str] = []

    def call() -> None:
        try:
            done = client.completions.create(model="tiny-qwen", prompt="b", max_tokens=1900, logit_bias=NO_SPECIALS)
            served.append(done.choices[0].finish_reason)
        except openai.APIStatusError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert refused and served and len(refused) + len(served) == 4
    for exc in refused:
        assert exc.status_code == 503 and exc.code == "overloaded"
        assert int(exc.response.headers["retry-after"]) >= 1
    wait_until(lambda: idle(server))


def test_hundred_mid_stream_disconnects_leave_the_server_idle(server):
    wait_until(lambda: idle(server))
    threads_before = threading.active_count()
    tasks_before = task_count(server)
    cancelled_before = server.state.pool.counters.cancelled.get("tiny-qwen", 0)
    for _ in range(100):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=LONG) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                next(lines)
    wait_until(lambda: idle(server))
    assert server.state.pool.counters.cancelled.get("tiny-qwen", 0) - cancelled_before >= 95
    wait_until(lambda: task_count(server) <= tasks_before + 1)
    assert threading.active_count() <= threads_before + 2
    ok = httpx.post(server.url + "/v1/completions", json={"model": "tiny-qwen", "prompt": "z", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_failure_after_headers_ends_the_stream_in_each_dialect():
    """Once headers are out, a failure is the dialect's own error event, which its clients raise on."""
    err = GenerationFailed("The model failed while generating: boom")
    sse = OpenAIFormat(True, "m", False).error(err).decode()
    assert sse.startswith("data: ") and json.loads(sse[6:])["error"]["code"] == "generation_failed"
    line = OllamaFormat("m", chat=False).error(err).decode()
    assert json.loads(line) == {"error": "The model failed while generating: boom"}
    llama = LlamaFormat("m", LlamaSampling.model_validate({})).error(err).decode()
    assert json.loads(llama[6:])["error"]["code"] == 500
    tail = OpenAIFormat(False, "m", True).tail(Finish("stop", Usage(prompt_tokens=3, completion_tokens=2))).decode()
    events = [e for e in tail.split("\n\n") if e]
    assert json.loads(events[1][6:])["usage"]["total_tokens"] == 5 and events[-1] == "data: [DONE]"

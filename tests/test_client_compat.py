"""Gaps real clients found, each closed end to end: real uvicorn, real tiny GGUFs, real clients.

Codex `--oss` reads /api/version, Ollama clients delete with DELETE, Ollama's /api/show reports the
GGUF's architecture and stop strings, llama.vim's instruction feature sends llama.cpp extensions to
/v1/chat/completions, and llama-server answers /chat/completions without the /v1 prefix.
"""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from server_harness import isolated_env, live_server
from tiny_gguf import write_tiny_gguf

from models.catalog import catalog_from_files
from router.app import create_app
from router.settings import Settings


class RequestCounter:
    """ASGI middleware counting the HTTP requests that reach the app, by path (an SDK's retries add to it)."""

    def __init__(self, app, counts: dict[str, int]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.counts[scope["path"]] = self.counts.get(scope["path"], 0) + 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory):
    """A tiny model whose header says `general.architecture: qwen2`, as Qwen2.5-Coder's GGUFs do."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf", architecture="qwen2", seed=2)


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_gguf_nofim, qwen2_gguf, tmp_path_factory):
    """fim -> tiny-qwen (llama architecture, Qwen FIM tokens); chat, instruct -> tiny-nofim; code_edit -> tiny-qwen2."""
    with isolated_env(tmp_path_factory.mktemp("compat")):
        catalog = catalog_from_files(
            {"fim": tiny_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim, "code_edit": qwen2_gguf},
            n_ctx=1024,
        )
        app = create_app(Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0), catalog=catalog)
        counts: dict[str, int] = {}
        app.add_middleware(RequestCounter, counts=counts)
        with live_server(app) as srv:
            srv.counts = counts
            yield srv


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


# ----------------------------------------------------------------------------- Ollama


def test_api_version_is_one_codex_oss_accepts(http):
    version = http.get("/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 13, 4)


def test_delete_model_is_a_501_with_the_cli_to_use_instead(http, oll):
    r = http.request("DELETE", "/api/delete", json={"model": "tiny-qwen"})
    assert r.status_code == 501 and r.headers["x-should-retry"] == "false"
    assert "route models rm" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as caught:
        oll.delete("tiny-qwen")
    assert caught.value.status_code == 501


def test_the_openai_sdk_does_not_retry_a_501(server):
    """The SDK retries every 5xx (twice by default) unless told not to: one request must reach us."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=2, timeout=60)
    before = server.counts.get("/v1/completions", 0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="tiny-nofim", prompt="a = ", suffix="\n", max_tokens=2)
    assert caught.value.status_code == 501
    assert server.counts["/v1/completions"] - before == 1


def test_show_reports_the_gguf_architecture_before_and_after_loading(oll, server):
    assert not any(st.id == "tiny-qwen2" and st.loaded for st in server.state.pool.status())
    for _ in ("from the header on disk", "from the loaded model"):
        shown = oll.show("tiny-qwen2")
        assert shown.details.family == "qwen2" and shown.details.families == ["qwen2"]
        assert shown.modelinfo["general.architecture"] == "qwen2"
        assert shown.modelinfo["qwen2.context_length"] == 1024
        oll.chat(model="tiny-qwen2", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 1})
    tags = {m.model: m.details.family for m in oll.list().models}
    assert tags["tiny-qwen2"] == "qwen2" and tags["tiny-qwen"] == "llama"


def test_show_parameters_carry_the_fim_stops_the_model_stops_on(oll, http):
    from models.fim import FAMILIES

    http.post("/infill", json={"input_prefix": "", "input_suffix": "", "n_predict": 0})  # loads the FIM model
    stops = {line for line in oll.show("fim").parameters.splitlines() if line.startswith("stop ")}
    assert stops == {f"stop {json.dumps(s)}" for s in FAMILIES["qwen"].stops}
    assert oll.show("auto").parameters.count("stop ") == len(stops)  # auto's FIM goes to the fim model
    plain = oll.show("tiny-nofim").parameters
    assert "num_ctx 1024" in plain and "stop " not in plain

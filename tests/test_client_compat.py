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

from server_harness import isolated_env, live_server, wait_idle
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


# ----------------------------------------------------------------------------- llama.vim's instruction feature

# llama.vim's llama#inst_build system prompt, with its section rulers (autoload/llama.vim).
LLAMA_VIM_INST_SYSTEM = (
    "You are a text-editing assistant. Respond ONLY with the result of applying INSTRUCTION to SELECTION given "
    "the CONTEXT. Maintain the existing text indentation. Do not add extra code blocks. Respond only with the "
    "modified block. If the INSTRUCTION is a question, answer it directly. Do not output any extra separators. "
    "Consider the local context before (PREFIX) and after (SUFFIX) the SELECTION.\n\n"
    "--- CONTEXT     " + "-" * 40 + "\n\n"
    "--- PREFIX      " + "-" * 40 + "\nimport os\n"
    "--- SELECTION   " + "-" * 40 + "\ndef f(x):\n    return x\n"
    "--- SUFFIX      " + "-" * 40 + "\n\n"
)


def inst_messages(instruction: str) -> list[dict]:
    return [{"role": "system", "content": LLAMA_VIM_INST_SYSTEM},
            {"role": "user", "content": "INSTRUCTION: " + instruction if instruction else ""}]


LLAMA_VIM_INST_WARMUP = {  # llama#inst: sent while the user types the instruction
    "id_slot": 0, "messages": inst_messages(""), "samplers": [], "n_predict": 0, "stream": False,
    "cache_prompt": True, "response_fields": [""],
}
LLAMA_VIM_INST_SEND = {  # llama#inst_send
    "id_slot": 0, "messages": inst_messages("rename x to value"), "min_p": 0.1, "temperature": 0.1,
    "samplers": ["min_p", "temperature"], "stream": True, "cache_prompt": True,
}


def generated_tokens(server) -> int:
    return sum(server.state.pool.counters.tokens.values())


def test_llama_vim_instruction_warmup_evaluates_the_prompt_and_generates_nothing(http, server):
    before = generated_tokens(server)
    r = http.post("/v1/chat/completions", json=LLAMA_VIM_INST_WARMUP)
    assert r.status_code == 200, r.text
    body = r.json()  # like llama-server, response_fields does not cut an OpenAI-shaped answer
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] > 100
    wait_idle(server)  # the pool counts a request once its worker is done with it
    assert generated_tokens(server) == before
    assert server.state.pool.counters.prompt_tokens[r.headers["x-route-model"]] >= body["usage"]["prompt_tokens"]


def test_llama_vim_instruction_streams_after_its_warmup(http):
    with http.stream("POST", "/v1/chat/completions", json={**LLAMA_VIM_INST_SEND, "model": "chat"}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_response_fields_does_not_cut_an_openai_answer_and_max_tokens_zero_is_still_refused(http):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "n_predict": 2,
            "response_fields": ["content"]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and {"id", "choices", "usage"} <= set(r.json())
    r = http.post("/v1/chat/completions", json={**body, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


# ----------------------------------------------------------------------------- llama-server's unprefixed paths


def test_chat_completions_answers_without_the_v1_prefix(server, http):
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.parse().choices[0].finish_reason in {"stop", "length"} and raw.headers["x-route-model"] == "tiny-nofim"
    r = http.post("/chat/completions", json={"messages": []})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_completions_without_the_prefix_is_llama_servers_native_completion(http):
    """llama-server serves /completions with its /completion handler (not the OpenAI one): so does the router."""
    r = http.post("/completions", json={"model": "chat", "prompt": "x = ", "n_predict": 2})
    assert r.status_code == 200 and "content" in r.json() and "choices" not in r.json()
    r = http.post("/completions", json={"prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400

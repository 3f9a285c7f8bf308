"""The upstream backend and the router against a real llama.cpp `llama-server`, built by
`route engine build-server` from the llama.cpp tree the pinned llama-cpp-python vendors.

The binary is built once per machine (the first test here waits for it: minutes) and cached in
the user cache dir; without cmake or a C++ compiler these tests skip, saying so. Every server
is started with docker-compose.yml's own llama-server command lines (model path, host, port
and threads substituted; `--slots` added so tests can watch a slot stop), and the router's
catalog is deploy/catalog.compose.yaml with its urls pointed at those processes: the compose
shape, run for real. The tiny GGUF's text is gibberish (assert structure); the real Qwen
weights (`qwen` marker) answer for real.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import openai
import pytest

from models.backend import BackendOptions
from models.catalog import catalog_from_data, load_catalog
from models.events import Finish, TextDelta, ToolCallDelta, ToolCallStart
from models.request import Request, SamplingParams, Tool, ToolChoice, text_message
from models.upstream_backend import UpstreamBackend
from models.replicas import ReplicaSet
from router.app import create_app
from router.settings import Settings
from server_harness import isolated_env, live_server, wait_until
from test_upstream_compose import flag, llama_services
from tiny_gguf import write_tiny_gguf
from upstream_harness import LONG_STREAM_BIAS, LlamaServer

# The first test that needs the binary builds it (minutes on 2 cores); later ones take seconds.
pytestmark = [pytest.mark.llama_server, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_CATALOG = ROOT / "deploy" / "catalog.compose.yaml"
# docker-compose.yml's ${VAR:-default} variables as these tests set them: one thread per server.
COMPOSE_ENV = {"CODER_THREADS": "1", "CHAT_THREADS": "1"}
LONG_BIAS = {str(k): v for k, v in LONG_STREAM_BIAS.items()}


# --- the binary and the servers ------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The cached llama-server, built here first if this machine has none (once per machine)."""
    from models.llama_server_build import ServerBuildError, build_server, find_server, require_toolchain

    found = find_server()
    if found is not None:
        return found
    try:
        require_toolchain()
    except ServerBuildError as exc:
        pytest.skip(f"llama-server is not built and cannot be built here: {exc}")
    try:
        return build_server().path
    except ServerBuildError as exc:
        if "pip download" in str(exc):  # no PyPI: the sdist cannot be fetched
            pytest.skip(f"llama-server is not built and its sources cannot be fetched: {exc}")
        raise


def compose_args(service: str, model: Path, env: dict[str, str] = COMPOSE_ENV) -> list[str]:
    """The service's llama-server command line from docker-compose.yml: ${VAR:-default} resolved
    from `env`, --model pointed at `model`, --host and --port left to the harness."""
    command = [re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), str(arg))
               for arg in llama_services()[service]["command"]]
    args: list[str] = []
    skip = False
    for i, arg in enumerate(command):
        if skip:
            skip = False
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        args.append(str(model) if i > 0 and command[i - 1] == "--model" else arg)
    return args


def start_compose_service(binary: Path, service: str, model: Path, log_dir: Path, *, extra: tuple[str, ...] = ("--slots",),
                          port: int | None = None) -> LlamaServer:
    return LlamaServer(binary, compose_args(service, model) + list(extra), log_dir, port=port).start()


def compose_catalog(urls: dict[str, str]):
    """deploy/catalog.compose.yaml with each container's url replaced by a live server's."""
    data = json.loads(load_catalog(COMPOSE_CATALOG).model_dump_json(exclude_none=True))
    for model in data["models"]:
        host = model["source"]["urls"][0].split("//")[1].split(":")[0]
        model["source"]["urls"] = [urls[host]]
    return catalog_from_data(data)


@pytest.fixture(scope="module")
def long_gguf(tmp_path_factory) -> Path:
    """The tiny model with room for compose's 8192-token context."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-long.gguf", fim_family="qwen", n_ctx=8192)


@pytest.fixture(scope="module")
def compose_servers(llama_server_bin, long_gguf, tmp_path_factory):
    """One llama-server per compose service (coder, chat), the tiny model in each."""
    log_dir = tmp_path_factory.mktemp("llama-server-logs")
    servers: dict[str, LlamaServer] = {}
    try:
        for service in llama_services():
            servers[service] = start_compose_service(llama_server_bin, service, long_gguf, log_dir)
        yield servers
    finally:
        for server in servers.values():
            server.kill()


@pytest.fixture(scope="module")
def compose_router(compose_servers, tmp_path_factory):
    """The router with deploy/catalog.compose.yaml pointed at the live servers."""
    with isolated_env(tmp_path_factory.mktemp("compose-router")):
        catalog = compose_catalog({name: server.url for name, server in compose_servers.items()})
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as srv:
            yield srv


@pytest.fixture
def make_backend():
    made: list[UpstreamBackend] = []

    def make(spec_or_urls, **source) -> UpstreamBackend:
        spec = spec_or_urls if not isinstance(spec_or_urls, list) else catalog_from_data({"models": [{
            "id": "coder", "labels": ["code_edit"], "n_ctx": 4096, "fim_family": "qwen",
            "source": {"kind": "upstream", "api": "llama.cpp", "urls": spec_or_urls, **source},
        }]}).models[0]
        backend = UpstreamBackend(spec, BackendOptions(), backoff_base_s=0.2, backoff_max_s=1.0, health_interval_s=0.3)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def run(backend: UpstreamBackend, request: Request, cancel: threading.Event | None = None) -> list:
    return list(backend.generate(request, cancel or threading.Event()))


def finish_of(events: list) -> Finish:
    assert events and isinstance(events[-1], Finish), events
    return events[-1]


def slots_busy(server: LlamaServer) -> bool:
    return any(slot["is_processing"] for slot in httpx.get(server.url + "/slots", timeout=5).json())


CHAT = Request("chat", messages=(text_message("user", "hello"),), params=SamplingParams(max_tokens=8))
COMPLETE = Request("complete", prompt="def add(a, b):", params=SamplingParams(max_tokens=8))
FIM = Request("fim", prefix="def add(a, b):\n    ", suffix="\n", params=SamplingParams(max_tokens=8))


# --- docker-compose.yml's command lines ---------------------------------------------------------


def test_compose_command_lines_run_the_real_binary_as_the_catalog_expects(compose_servers):
    """Every flag in docker-compose.yml is one this llama-server takes; each server is what
    deploy/catalog.compose.yaml says of it (alias, slots, context)."""
    catalog = load_catalog(COMPOSE_CATALOG)
    for name, server in compose_servers.items():
        command = llama_services()[name]["command"]
        assert server.args[: len(server.args) - 1] == compose_args(name, server.args[1])  # compose's own, + --slots
        props = httpx.get(server.url + "/props", timeout=5).json()
        assert props["total_slots"] == int(flag(command, "--parallel"))
        assert props["default_generation_settings"]["n_ctx"] == int(flag(command, "--ctx-size")) // int(flag(command, "--parallel"))
        models = httpx.get(server.url + "/v1/models", timeout=5).json()
        alias = flag(command, "--alias")
        assert [m["id"] for m in models["data"]] == [alias]
        spec = next(s for s in catalog.models if s.source.upstream_model == alias)
        assert spec.n_ctx <= props["default_generation_settings"]["n_ctx"]
    assert "--cache-reuse" in llama_services()["coder"]["command"]


# --- the backend: chat, completions, /infill ---------------------------------------------------


def test_chat_completions_and_infill_stream_from_llama_server(compose_servers, make_backend):
    coder = compose_servers["coder"]
    backend = make_backend([coder.url], upstream_model="qwen2.5-coder-0.5b-instruct", parallel=2)
    before = {path: coder.requests_served(path) for path in ("/v1/chat/completions", "/infill")}
    for request, path in ((CHAT, "/v1/chat/completions"), (COMPLETE, "/v1/completions"), (FIM, "/infill")):
        finished = coder.generations_finished()
        events = run(backend, request)
        done = finish_of(events)
        assert all(isinstance(e, TextDelta) for e in events[:-1]), events
        assert done.reason in ("stop", "length") and done.error is None, done
        assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
        assert done.usage.predicted_ms > 0  # llama-server's own timings came through
        assert wait_until(lambda: coder.generations_finished() == finished + 1, 5)  # its log is written by a thread
        if path in before:  # logged once its stream is closed: a moment after our Finish
            assert wait_until(lambda: coder.requests_served(path) == before[path] + 1, 5), path


def test_a_long_prompt_is_counted_by_llama_servers_tokenizer(compose_servers, make_backend):
    backend = make_backend([compose_servers["coder"].url])
    text = "hello world " * 1000  # past n_ctx/2 by the estimate: /tokenize is asked
    request = Request("complete", prompt=text, params=SamplingParams(max_tokens=1))
    exact = len(httpx.post(compose_servers["coder"].url + "/tokenize", json={"content": text}, timeout=10).json()["tokens"])
    assert backend.count_prompt_tokens(request) == exact + 1


# --- the router in front, streaming and not ------------------------------------------------------


def test_router_answers_every_dialect_from_llama_server_streaming_and_not(compose_router, compose_servers):
    client = openai.OpenAI(base_url=compose_router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.with_raw_response.create(model="chat", messages=messages, max_tokens=8)
    assert reply.headers["x-route-model"] == "qwen2.5-coder-1.5b-instruct"
    assert reply.parse().choices[0].finish_reason in ("stop", "length") and reply.parse().usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=8, stream=True))
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    completion = client.completions.create(model="code_edit", prompt="def add(a, b):", max_tokens=8)
    assert completion.choices[0].text and completion.usage.prompt_tokens > 0
    streamed = list(client.completions.create(model="code_edit", prompt="def add(a, b):", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices)

    served = compose_servers["coder"].requests_served("/infill")
    body = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 8}
    plain = httpx.post(compose_router.url + "/infill", json=body, timeout=60)
    assert plain.status_code == 200 and plain.headers["x-route-label"] == "fim"
    assert plain.headers["x-route-model"] == "qwen2.5-coder-0.5b-instruct" and plain.json()["content"]
    with httpx.stream("POST", compose_router.url + "/infill", json={**body, "stream": True}, timeout=60) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["stop"] is True and "".join(e["content"] for e in events)
    assert wait_until(lambda: compose_servers["coder"].requests_served("/infill") == served + 2, 5)


def test_a_client_that_disconnects_stops_llama_servers_slot(compose_router, compose_servers):
    coder = compose_servers["coder"]
    cancels = coder.log_text().count("cancel task")
    body = {"model": "code_edit", "prompt": "x", "max_tokens": 3000, "stream": True, "logit_bias": LONG_BIAS}
    lines = 0
    with httpx.stream("POST", compose_router.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines += line.startswith("data:")
            if lines == 5:
                assert slots_busy(coder)
                break  # closes the connection mid-stream
    assert wait_until(lambda: not slots_busy(coder), 10), "llama-server kept generating for a gone client"
    assert coder.log_text().count("cancel task") > cancels
    last = re.findall(r"stop processing: n_past = (\d+)", coder.log_text())[-1]
    assert int(last) < 3000  # cut short, not run to max_tokens


# --- health checks and dying replicas -----------------------------------------------------------


def test_health_checks_follow_a_real_llama_server_down_and_back(llama_server_bin, long_gguf, tmp_path):
    server = start_compose_service(llama_server_bin, "coder", long_gguf, tmp_path)
    client = httpx.Client()
    replicas = ReplicaSet("coder", [server.url], client, health_paths=("/health",), health_interval_s=0.2,
                          backoff_base_s=0.2, backoff_max_s=0.5)
    try:
        replica = replicas.replicas[0]
        assert replicas.probe(replica) and replica.health_path == "/health"
        server.kill()
        assert wait_until(lambda: not replica.healthy, 5), "the routine probe missed a dead server"
        assert "health check failed" in replica.last_error
        server.start()  # the same port again
        assert wait_until(lambda: replica.healthy, 10), replica.last_error
    finally:
        replicas.close()
        client.close()
        server.kill()


def test_a_replica_killed_mid_stream_ends_with_an_error_and_the_other_serves(llama_server_bin, long_gguf, tmp_path,
                                                                               make_backend):
    a, b = (start_compose_service(llama_server_bin, "coder", long_gguf, tmp_path) for _ in range(2))
    try:
        backend = make_backend([a.url, b.url], parallel=2)
        long = Request("complete", prompt="x", params=SamplingParams(max_tokens=3000, logit_bias=LONG_STREAM_BIAS))
        events = []
        for event in backend.generate(long, threading.Event()):
            events.append(event)
            if len(events) == 5:
                serving = next(s for s, r in zip((a, b), backend.replicas.replicas) if r.outstanding)
                serving.kill()
        done = finish_of(events)
        assert done.reason == "error" and serving.url in done.error and "mid-stream" in done.error, done
        other = b if serving is a else a
        served = other.generations_finished()
        for _ in range(2):  # the dead one is out: both go to the survivor
            assert finish_of(run(backend, COMPLETE)).reason in ("stop", "length")
        assert wait_until(lambda: other.generations_finished() == served + 2, 5)
    finally:
        a.kill()
        b.kill()


def test_a_dead_llama_server_is_a_502_naming_its_model_and_the_others_keep_serving(llama_server_bin, long_gguf,
                                                                                     tiny_gguf, tmp_path):
    coder = start_compose_service(llama_server_bin, "coder", long_gguf, tmp_path)
    catalog = catalog_from_data({"models": [
        {"id": "llama-coder", "labels": ["code_edit"], "n_ctx": 2048,
         "source": {"kind": "upstream", "api": "llama.cpp", "urls": [coder.url], "parallel": 2}},
        {"id": "tiny-local", "labels": ["chat", "instruct", "fim"], "n_ctx": 2048,
         "source": {"kind": "local", "path": str(tiny_gguf)}},
    ]})
    try:
        with isolated_env(tmp_path), live_server(create_app(Settings(idle_ttl_s=0, n_threads=1), catalog=catalog)) as srv:
            ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert httpx.post(srv.url + "/v1/chat/completions", json={**ask, "model": "llama-coder"}, timeout=60).status_code == 200
            coder.kill()  # crashed
            dead = httpx.post(srv.url + "/v1/chat/completions", json={**ask, "model": "llama-coder"}, timeout=60)
            assert dead.status_code == 502 and dead.json()["error"]["code"] == "upstream_unavailable"
            assert "llama-coder" in dead.json()["error"]["message"] and coder.url in dead.json()["error"]["message"]
            alive = httpx.post(srv.url + "/v1/chat/completions", json={**ask, "model": "tiny-local"}, timeout=60)
            assert alive.status_code == 200 and alive.headers["x-route-model"] == "tiny-local"
            health = httpx.get(srv.url + "/health", timeout=10)
            assert health.status_code in (200, 503)
    finally:
        coder.kill()


# --- the real weights ----------------------------------------------------------------------------

WEATHER = Tool(name="get_weather", description="Current weather for a city.",
               parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


@pytest.fixture(scope="module")
def qwen_coder(llama_server_bin, qwen_gguf, tmp_path_factory):
    """The compose `coder` service exactly, on the real weights, with --jinja for tool calls."""
    server = start_compose_service(llama_server_bin, "coder", qwen_gguf, tmp_path_factory.mktemp("qwen-llama-server"),
                                   extra=("--slots", "--jinja"))
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.qwen
def test_qwen_on_llama_server_answers_chat_completions_and_infill(qwen_coder, make_backend):
    backend = make_backend([qwen_coder.url], upstream_model="qwen2.5-coder-0.5b-instruct", parallel=2)
    greedy = SamplingParams(max_tokens=24, temperature=0.0)
    text = lambda events: "".join(e.text for e in events if isinstance(e, TextDelta))  # noqa: E731
    chat = run(backend, Request("chat", messages=(text_message("user", "What is 2 + 2? Answer with the number only."),),
                                params=greedy))
    assert "4" in text(chat) and finish_of(chat).reason == "stop"
    completion = run(backend, Request("complete", prompt="# python\ndef add(a, b):\n    return", params=greedy))
    assert "a + b" in text(completion)
    infill = run(backend, Request("fim", prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                  params=greedy))
    assert "a + b" in text(infill)
    assert wait_until(lambda: qwen_coder.requests_served("/infill") == 1, 5)


@pytest.mark.qwen
@pytest.mark.parametrize("choice", ["required", "auto"])
def test_qwen_on_llama_server_calls_tools_with_jinja(qwen_coder, make_backend, choice):
    backend = make_backend([qwen_coder.url], upstream_model="qwen2.5-coder-0.5b-instruct", parallel=2)
    request = Request("chat", messages=(text_message("user", "What is the weather in Paris?"),), tools=(WEATHER,),
                      tool_choice=ToolChoice(mode=choice), params=SamplingParams(max_tokens=64, temperature=0.0))
    events = run(backend, request)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.name for s in starts] == ["get_weather"], events
    arguments = json.loads("".join(e.arguments for e in events if isinstance(e, ToolCallDelta)))
    assert arguments["city"].lower().startswith("paris")
    assert finish_of(events).reason == "tool_calls"


@pytest.mark.qwen
def test_qwen_tool_calls_through_the_router_from_llama_server(qwen_coder, tmp_path):
    with isolated_env(tmp_path):
        catalog = compose_catalog({"coder": qwen_coder.url, "chat": qwen_coder.url})
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            tools = [{"type": "function", "function": {"name": WEATHER.name, "description": WEATHER.description,
                                                       "parameters": WEATHER.parameters}}]
            reply = client.chat.completions.create(
                model="code_edit", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=tools,
                tool_choice="required", max_tokens=64, temperature=0)
            call = reply.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()
            assert reply.choices[0].finish_reason == "tool_calls"

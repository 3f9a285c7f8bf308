"""Tools through upstream backends: passed on unchanged, and the upstream's streamed calls come back as ours.

Two real upstreams: a second instance of our router serving the tiny tool-capable GGUF (its
grammar makes the random weights call the tool), and llama-cpp-python's own server with its
`chatml-function-calling` format, whose stream repeats the id and the name in every chunk.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from server_harness import isolated_env, live_server
from test_tools_server import CITY, HERMES_TEMPLATE, TOOLS
from tiny_gguf import write_tiny_gguf
from upstream_harness import LlamaCppServer

from models.catalog import catalog_from_data, catalog_from_files
from router.app import create_app
from router.settings import Settings

ASK = [{"role": "user", "content": "weather in Oslo?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tools_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-tools.gguf", fim_family=None, seed=2,
                           chat_template=HERMES_TEMPLATE)


@pytest.fixture(scope="module")
def router_upstream(tools_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("router-upstream")
    with isolated_env(tmp):
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog_from_files({"code_edit": tools_gguf}, n_ctx=2048))
        with live_server(app) as srv:
            yield srv


@pytest.fixture(scope="module")
def llama_cpp_upstream(tools_gguf, tmp_path_factory):
    server = LlamaCppServer(tools_gguf, tmp_path_factory.mktemp("lcp-upstream"), n_ctx=2048,
                            extra_args=("--chat_format", "chatml-function-calling"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def front(router_upstream, llama_cpp_upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    catalog = catalog_from_data({"models": [
        {"id": "via-router", "labels": ["code_edit", "chat", "instruct"],
         "source": {"kind": "upstream", "urls": [router_upstream.url], "upstream_model": "code_edit"}},
        {"id": "via-llama-cpp", "labels": [], "source": {"kind": "upstream", "urls": [llama_cpp_upstream.url]}},
    ]})
    with isolated_env(tmp):
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog)
        with live_server(app) as srv:
            yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_calls_from_an_upstream_router_come_back_whole_and_valid(front, stream):
    kw = dict(model="via-router", messages=ASK, tools=TOOLS, tool_choice=NAMED, parallel_tool_calls=False,
              max_tokens=300, temperature=0)
    if stream:
        chunks = list(front.chat.completions.create(stream=True, **kw))
        deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0].function.name == "get_weather" and all(d.function.name is None for d in deltas[1:])
        arguments = "".join(d.function.arguments or "" for d in deltas)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        choice = front.chat.completions.create(**kw).choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        arguments = call.function.arguments
    # The upstream applied the grammar of the tool it was given: the tools arrived intact.
    jsonschema.validate(json.loads(arguments), CITY)


def test_llama_cpp_python_repeating_id_and_name_makes_one_call(front):
    chunks = list(front.chat.completions.create(
        model="via-llama-cpp", messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=200, temperature=0, stream=True))
    deltas = [d for c in chunks if c.choices and c.choices[0].delta.tool_calls for d in c.choices[0].delta.tool_calls]
    assert deltas, "llama-cpp-python's named-tool path made no call"
    assert {d.index for d in deltas} == {0}
    assert [d.function.name for d in deltas if d.function.name] == ["get_weather"]
    assert isinstance(json.loads("".join(d.function.arguments or "" for d in deltas)), dict)

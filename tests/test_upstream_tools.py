"""Tools through upstream backends: passed on unchanged, and the upstream's streamed calls come back as ours.

Two real upstreams: a second instance of our router serving the tiny tool-capable GGUF (its
grammar makes the random weights call the tool), and llama-cpp-python's own server with its
`chatml-function-calling` format, whose stream repeats the id and the name in every chunk.
Then a scripted upstream that replays streams in the shapes other servers write (vLLM, Ollama,
sparse and interleaved indexes) and keeps the exact bodies it was sent.
"""

from __future__ import annotations

import json
import threading

import jsonschema
import openai
import pytest

from server_harness import isolated_env, live_server
from test_tools_server import CITY, HERMES_TEMPLATE, TOOLS
from tiny_gguf import write_tiny_gguf
from upstream_harness import LlamaCppServer, ScriptedUpstream

from models.backend import BackendOptions
from models.catalog import ModelSpec, catalog_from_data, catalog_from_files
from models.events import Finish, TextDelta, ToolCallDelta, ToolCallStart
from models.request import (
    Message, OutputFormat, Request, SamplingParams, Tool, ToolCall, ToolChoice, ToolResult, text_message,
)
from models.upstream_backend import UpstreamBackend
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


# --- against a scripted upstream: the exact body it got, and streams in other servers' shapes ----
#
# The streams below are written the way each server writes them (field for field, from its source:
# OpenAI's documented sequence, llama-cpp-python 0.3's `_convert_completion_to_chat_function`,
# vLLM's named tool_choice path, Ollama's /v1 before and after 0.5). The scripted server only
# replays them: what is under test is what our UpstreamBackend and router make of them.

TICKET = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


def chunk(delta=None, finish=None, **extra):
    """One chat.completion.chunk as the servers below write it."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}], **extra}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852}}

# PROTOCOLS-AGENTS.md §1.4: a preamble, call 0 in pieces, call 1 whole, the reason, then usage.
OPENAI_STREAM = [
    chunk({"role": "assistant", "content": None}),
    chunk({"content": "Let me check."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_7Qx", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\",\"days\":2}"}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_8Rz", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    USAGE,
]


def lcp_piece(text):
    """llama-cpp-python: every chunk repeats the call's id and name, beside a legacy function_call."""
    return chunk({"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": text},
                  "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-9", "type": "function",
                                  "function": {"name": "get_weather", "arguments": text}}]})


LLAMA_CPP_PYTHON_STREAM = [
    chunk({"role": "assistant", "content": None, "function_call": None, "tool_calls": None}),
    *[lcp_piece(t) for t in ["{\"", "city", "\": \"", "Oslo", "\", \"days\": ", "3", "}"]],
    chunk({"role": None, "content": None, "function_call": None, "tool_calls": None}, "tool_calls"),
]

# vLLM, named tool_choice: the first delta has the name and no arguments key, and it ends with "stop".
VLLM_NAMED_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"tool_calls": [{"id": "chatcmpl-tool-1", "type": "function", "index": 0,
                           "function": {"name": "get_weather"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Rome\""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ", \"days\": 1}"}}]}),
    chunk({}, "stop"),
]

# Ollama's /v1 from 0.5: each call whole in one delta, with an index.
OLLAMA_STREAM = [
    chunk({"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a1", "index": 0, "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"days\":1}"}}]}),
    chunk({"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_b2", "index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
    chunk({"role": "assistant", "content": ""}, "tool_calls"),
]

# Ollama's /v1 before 0.5: no index, each call whole under its own id, and the reason "stop".
OLD_OLLAMA_STREAM = [
    chunk({"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"days\":1}"}}]}),
    chunk({"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_b2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
    chunk({"role": "assistant", "content": ""}, "stop"),
]

# Parallel calls whose pieces interleave, under the upstream's own sparse indexes; the second call's
# id comes a delta before its name, and an argument piece before the name too.
INTERLEAVED_STREAM = [
    chunk({"tool_calls": [{"index": 4, "id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 9, "id": "call_y", "type": "function", "function": {}}]}),
    chunk({"tool_calls": [{"index": 4, "function": {"arguments": "{\"city\":\"Rome\","}},
                          {"index": 9, "function": {"arguments": "{"}}]}),
    chunk({"tool_calls": [{"index": 9, "function": {"name": "get_time", "arguments": "}"}}]}),
    chunk({"tool_calls": [{"index": 4, "function": {"arguments": "\"days\":5}"}}]}),
    chunk({}, "tool_calls"),
]

# What each stream's calls are, as a client must end up with them: (id, name, arguments).
EXPECTED = {
    "openai": [("call_7Qx", "get_weather", "{\"city\":\"Oslo\",\"days\":2}"), ("call_8Rz", "get_time", "{}")],
    "llama-cpp-python": [("call__0_get_weather_cmpl-9", "get_weather", "{\"city\": \"Oslo\", \"days\": 3}")],
    "vllm-named": [("chatcmpl-tool-1", "get_weather", "{\"city\": \"Rome\", \"days\": 1}")],
    "ollama": [("call_a1", "get_weather", "{\"city\":\"Oslo\",\"days\":1}"), ("call_b2", "get_time", "{}")],
    "old-ollama": [("call_a1", "get_weather", "{\"city\":\"Oslo\",\"days\":1}"), ("call_b2", "get_time", "{}")],
    "interleaved": [("call_x", "get_weather", "{\"city\":\"Rome\",\"days\":5}"), ("call_y", "get_time", "{}")],
}
STREAMS = {"openai": OPENAI_STREAM, "llama-cpp-python": LLAMA_CPP_PYTHON_STREAM, "vllm-named": VLLM_NAMED_STREAM,
           "ollama": OLLAMA_STREAM, "old-ollama": OLD_OLLAMA_STREAM, "interleaved": INTERLEAVED_STREAM}

WEATHER = Tool("get_weather", "Weather in a city.", CITY)
CLOCK = Tool("get_time", "Time now.", {"type": "object", "properties": {}}, strict=True)


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def backend(scripted):
    spec = ModelSpec.model_validate({"id": "scripted", "labels": ["chat"], "n_ctx": 4096,
                                     "source": {"kind": "upstream", "urls": [scripted.url]}})
    made = UpstreamBackend(spec, BackendOptions())
    yield made
    made.close()


def generate(backend, scripted, stream, request=None):
    """Our events for one request, and the body the upstream was sent."""
    scripted.stream, scripted.bodies[:] = stream, []
    request = request or Request("chat", messages=ASK_MESSAGES, tools=(WEATHER, CLOCK), params=SamplingParams(max_tokens=50))
    events = list(backend.generate(request, threading.Event()))
    (body,) = scripted.bodies
    return events, body


ASK_MESSAGES = (text_message("user", "weather in Oslo?"),)


def calls_in(events):
    """(id, name, arguments) per call, checking the event contract on the way: indexes 0..n-1 in
    order, one start per call, every argument piece after its call's start, one Finish, last."""
    starts: dict[int, ToolCallStart] = {}
    arguments: dict[int, str] = {}
    for event in events[:-1]:
        assert not isinstance(event, Finish), events
        if isinstance(event, ToolCallStart):
            assert event.index == len(starts) and event.index not in starts, events
            starts[event.index] = event
            arguments[event.index] = ""
        elif isinstance(event, ToolCallDelta):
            assert event.index in starts, events
            arguments[event.index] += event.arguments
    assert isinstance(events[-1], Finish), events
    return [(starts[i].id, starts[i].name, arguments[i]) for i in range(len(starts))]


def test_the_upstream_gets_tools_tool_choice_and_response_format_in_the_openai_shape(backend, scripted):
    request = Request("chat", messages=ASK_MESSAGES, tools=(WEATHER, CLOCK),
                      tool_choice=ToolChoice("function", "get_weather", parallel=False),
                      output=OutputFormat("json_schema", TICKET), params=SamplingParams(max_tokens=50))
    _, body = generate(backend, scripted, OPENAI_STREAM, request)
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": CITY}},
        {"type": "function", "function": {"name": "get_time", "description": "Time now.",
                                          "parameters": {"type": "object", "properties": {}}, "strict": True}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": TICKET, "strict": True}}
    assert body["stream"] is True and body["messages"] == [{"role": "user", "content": "weather in Oslo?"}]


@pytest.mark.parametrize("mode", ["none", "auto", "required"])
def test_tool_choice_modes_pass_as_their_strings(backend, scripted, mode):
    request = Request("chat", messages=ASK_MESSAGES, tools=(WEATHER,), tool_choice=ToolChoice(mode),
                      params=SamplingParams(max_tokens=50))
    _, body = generate(backend, scripted, OPENAI_STREAM, request)
    assert body["tool_choice"] == mode and body["parallel_tool_calls"] is True


def test_without_tools_no_tool_fields_are_sent_and_json_is_json_object(backend, scripted):
    plain = Request("chat", messages=ASK_MESSAGES, params=SamplingParams(max_tokens=50))
    _, body = generate(backend, scripted, [chunk({"content": "hi"}), chunk({}, "stop")], plain)
    assert not {"tools", "tool_choice", "parallel_tool_calls", "response_format"} & body.keys()
    json_answer = Request("chat", messages=ASK_MESSAGES, output=OutputFormat("json"), params=SamplingParams(max_tokens=50))
    _, body = generate(backend, scripted, [chunk({"content": "{}"}), chunk({}, "stop")], json_answer)
    assert body["response_format"] == {"type": "json_object"} and "tools" not in body


def test_tool_history_goes_up_as_openai_tool_calls_and_tool_messages(backend, scripted):
    history = (
        text_message("user", "weather in Oslo?"),
        Message("assistant", (ToolCall("call_7Qx", "get_weather", {"city": "Oslo", "days": 2}),)),
        Message("tool", (ToolResult("call_7Qx", "-3C, snow"),)),
    )
    request = Request("chat", messages=history, tools=(WEATHER,), params=SamplingParams(max_tokens=50))
    _, body = generate(backend, scripted, [chunk({"content": "Cold."}), chunk({}, "stop")], request)
    assistant, tool = body["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"] in ("", None)
    (call,) = assistant["tool_calls"]
    assert call["id"] == "call_7Qx" and call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo", "days": 2}  # a JSON string, not an object
    assert tool == {"role": "tool", "tool_call_id": "call_7Qx", "content": "-3C, snow"}


@pytest.mark.parametrize("name", list(STREAMS))
def test_upstream_call_streams_become_one_start_per_call_and_argument_pieces(backend, scripted, name):
    events, _ = generate(backend, scripted, STREAMS[name])
    assert calls_in(events) == EXPECTED[name]
    assert events[-1].reason == "tool_calls" and events[-1].error is None


def test_the_openai_sequence_comes_out_event_for_event(backend, scripted):
    events, _ = generate(backend, scripted, OPENAI_STREAM)
    assert events[:-1] == [
        TextDelta("Let me check."),
        ToolCallStart(0, "call_7Qx", "get_weather"),
        ToolCallDelta(0, "{\"city\":"),
        ToolCallDelta(0, "\"Oslo\",\"days\":2}"),
        ToolCallStart(1, "call_8Rz", "get_time"),
        ToolCallDelta(1, "{}"),
    ]
    assert events[-1].usage.prompt_tokens == 812 and events[-1].usage.completion_tokens == 40


def test_llama_cpp_python_repeats_start_nothing_new(backend, scripted):
    events, _ = generate(backend, scripted, LLAMA_CPP_PYTHON_STREAM)
    assert sum(isinstance(e, ToolCallStart) for e in events) == 1
    # one piece per upstream chunk, none lost to the repeated name or the legacy function_call beside it
    assert sum(isinstance(e, ToolCallDelta) for e in events) == 7


def test_a_preamble_and_a_call_in_one_delta_keep_their_order(backend, scripted):
    stream = [chunk({"content": "Checking.", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls")]
    events, _ = generate(backend, scripted, stream)
    assert events[:-1] == [TextDelta("Checking."), ToolCallStart(0, "call_1", "get_time"), ToolCallDelta(0, "{}")]


def test_arguments_sent_as_an_object_become_json_text(backend, scripted):
    stream = [chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}}]}),
              chunk({}, "tool_calls")]
    events, _ = generate(backend, scripted, stream)
    ((_, _, arguments),) = calls_in(events)
    assert json.loads(arguments) == {"city": "Oslo", "days": 1}


def test_a_call_cut_by_the_length_limit_stays_length(backend, scripted):
    stream = [*VLLM_NAMED_STREAM[:3], chunk({}, "length")]
    events, _ = generate(backend, scripted, stream)
    assert calls_in(events) == [("chatcmpl-tool-1", "get_weather", "{\"city\": \"Rome\"")]
    assert events[-1].reason == "length"


def test_a_call_without_an_id_gets_one(backend, scripted):
    stream = [chunk({"tool_calls": [{"index": 0, "function": {"name": "get_time", "arguments": "{}"}}]}),
              chunk({}, "tool_calls")]
    events, _ = generate(backend, scripted, stream)
    ((call_id, name, _),) = calls_in(events)
    assert name == "get_time" and call_id


# --- end to end: the openai client -> our router -> the scripted upstream ----------------------


@pytest.fixture(scope="module")
def scripted_front(scripted, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scripted-front")
    catalog = catalog_from_data({"models": [
        {"id": "scripted", "labels": ["code_edit", "chat", "instruct"], "source": {"kind": "upstream", "urls": [scripted.url]}},
    ]})
    with isolated_env(tmp):
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog)
        with live_server(app) as srv:
            yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def test_client_tools_reach_the_upstream_unchanged_through_the_router(scripted_front, scripted):
    scripted.stream, scripted.bodies[:] = OPENAI_STREAM, []
    scripted_front.chat.completions.create(
        model="scripted", messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET, "strict": True}})
    (body,) = scripted.bodies
    assert body["tools"] == TOOLS and body["tool_choice"] == NAMED
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == TICKET


@pytest.mark.parametrize("name", list(STREAMS))
def test_client_streams_one_named_delta_per_call_and_the_upstreams_arguments(scripted_front, scripted, name):
    scripted.stream = STREAMS[name]
    chunks = list(scripted_front.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, max_tokens=50,
                                                          stream=True))
    seen: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            call = seen.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            # openai-python's accumulate_delta concatenates every string field: a repeat would show
            call["id"] += d.id or ""
            call["name"] += (d.function.name or "") if d.function else ""
            call["arguments"] += (d.function.arguments or "") if d.function else ""
    assert sorted(seen) == list(range(len(EXPECTED[name])))
    assert [(seen[i]["id"], seen[i]["name"], seen[i]["arguments"]) for i in sorted(seen)] == EXPECTED[name]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("name", ["openai", "llama-cpp-python", "old-ollama"])
def test_client_gets_the_calls_whole_without_streaming(scripted_front, scripted, name):
    scripted.stream = STREAMS[name]
    choice = scripted_front.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, max_tokens=50).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == EXPECTED[name]

"""Tool calls and structured output on the tiny GGUF: stream shapes, finish reasons, grammars, errors.

The tiny model's weights are random, so only a grammar makes its output a call: with
`tool_choice` required or named, every reply must be a valid call to a declared tool whatever
the weights say. A Hermes-style template (tools rendered, `<tool_call>` markers) makes it a
tool-capable model; the second tiny model keeps plain ChatML and cannot take tools.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from server_harness import isolated_env, live_server
from tiny_gguf import write_tiny_gguf

from models.catalog import catalog_from_files
from router.app import create_app
from router.settings import Settings

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "Call a function with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% elif message.tool_calls %}<|im_start|>assistant\n{% for tc in message.tool_calls %}<tool_call>\n"
    "{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CITY = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}, "days": {"type": "integer"}},
        "required": ["city", "days"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": CITY}},
    {"type": "function", "function": {"name": "get_time", "description": "Time now.",
                                      "parameters": {"type": "object", "properties": {}}}},
]
ASK = [{"role": "user", "content": "weather in Oslo?"}]
TOOL_MODEL = "tiny-tools"


@pytest.fixture(scope="module")
def server(tiny_gguf_nofim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools-server")
    tools_gguf = write_tiny_gguf(tmp / "tiny-tools.gguf", fim_family=None, seed=2, chat_template=HERMES_TEMPLATE)
    with isolated_env(tmp):
        catalog = catalog_from_files({"code_edit": tools_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim},
                                     n_ctx=2048)
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog)
        with live_server(app) as srv:
            yield srv


@pytest.fixture()
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def chat(oai, **kw):
    kw.setdefault("model", TOOL_MODEL)
    kw.setdefault("messages", ASK)
    kw.setdefault("max_tokens", 400)
    return oai.chat.completions.create(**kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_makes_even_random_weights_call_a_declared_tool_validly(oai, seed):
    response = chat(oai, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=seed, temperature=1.0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert call.id.startswith("call_")


def test_named_function_streams_id_and_name_once_then_argument_pieces(oai):
    chunks = list(chat(oai, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                       parallel_tool_calls=False, stream=True, temperature=0))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert all(d.id is None and d.function.name is None and d.index == 0 for d in deltas[1:])
    assert len(deltas) > 2
    jsonschema.validate(json.loads("".join(d.function.arguments or "" for d in deltas)), CITY)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)


def test_parallel_calls_get_their_own_indexes(oai):
    response = chat(oai, tools=TOOLS, tool_choice="required", temperature=0.8, seed=7, max_tokens=600)
    calls = response.choices[0].message.tool_calls or []
    assert len({c.id for c in calls}) == len(calls) >= 1
    for c in calls:
        assert isinstance(json.loads(c.function.arguments), dict)


def test_auto_without_a_call_is_plain_text_and_a_normal_finish(oai):
    response = chat(oai, tools=TOOLS, tool_choice="auto", max_tokens=24, temperature=0)
    choice = response.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_tool_choice_none_renders_no_tools_and_parses_none(oai):
    response = chat(oai, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0)
    assert response.choices[0].message.tool_calls is None
    plain = chat(oai, max_tokens=8, temperature=0)
    assert response.usage.prompt_tokens == plain.usage.prompt_tokens  # no tool prompt was rendered
    auto = chat(oai, tools=TOOLS, max_tokens=8, temperature=0)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # ...which auto does


def test_json_object_and_schema_outputs_are_constrained(oai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"]}
    response = chat(oai, temperature=0, response_format={"type": "json_schema",
                                                        "json_schema": {"name": "r", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)
    response = chat(oai, temperature=0, response_format={"type": "json_object"}, max_tokens=400)
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(response.choices[0].message.content), dict)
    else:  # random weights may fill the budget inside a string; what came out is still a JSON object's start
        assert response.choices[0].message.content.lstrip().startswith("{")


def test_tool_result_history_renders_through_the_template(oai):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Oslo", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "-3C"},
    ]
    response = chat(oai, messages=history, tools=TOOLS, max_tokens=4, temperature=0)
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_tool_request_routed_to_a_model_without_tools_goes_to_one_with(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "chat", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 300,
        "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    assert r.headers["x-route-model"] == TOOL_MODEL
    decision = httpx.post(server.url + "/v1/route", json={"model": "chat", "messages": ASK, "tools": TOOLS}).json()
    assert any("cannot call tools" in reason for reason in decision.get("reasons", [])), decision


def test_ollama_chat_with_tools_keeps_ollamas_framing(server):
    """Ollama has no tool_choice, so random weights write text here (whole calls: tests/test_tools_qwen.py)."""
    client = ollama.Client(host=server.url)
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}}]},
        {"role": "tool", "content": "-3C", "tool_name": "get_weather"}]
    response = client.chat(model=TOOL_MODEL, messages=history, tools=TOOLS, options={"num_predict": 8, "temperature": 0})
    assert response.message.role == "assistant" and response.done
    lines = [json.loads(line) for line in httpx.post(server.url + "/api/chat", json={
        "model": TOOL_MODEL, "messages": ASK, "tools": TOOLS, "options": {"num_predict": 8}}).text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")


def test_ollama_format_schema_is_constrained(server):
    schema = {"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]}
    client = ollama.Client(host=server.url)
    response = client.chat(model=TOOL_MODEL, messages=ASK, format=schema, options={"temperature": 0})
    jsonschema.validate(json.loads(response.message.content), schema)
    generated = client.generate(model=TOOL_MODEL, prompt="a number", format=schema, options={"temperature": 0})
    jsonschema.validate(json.loads(generated.response), schema)


# ---------------------------------------------------------------------------------------- bad input


def openai_error(server, body: dict) -> dict:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": TOOL_MODEL, "messages": ASK, **body})
    assert r.status_code == 400, r.text
    return r.json()["error"]


def ollama_error(server, body: dict) -> str:
    r = httpx.post(server.url + "/api/chat", json={"model": TOOL_MODEL, "messages": ASK, "stream": False, **body})
    assert r.status_code == 400, r.text
    return r.json()["error"]


BAD_TOOLS = [
    ([{"type": "function", "function": {"name": "f", "parameters": "nope"}}], "tools[0].function.parameters", "JSON Schema object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strnig"}}}}}],
     "tools[0].function.parameters", "not a valid JSON Schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "tools[0].function.parameters", "object"),
    ([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
     "tools[1].function.name", "Two tools"),
]


@pytest.mark.parametrize(("tools", "param", "needle"), BAD_TOOLS)
def test_malformed_tools_are_400_in_both_dialects(server, tools, param, needle):
    err = openai_error(server, {"tools": tools})
    assert err["param"] == param and needle in err["message"]
    assert needle in ollama_error(server, {"tools": tools})


def test_tool_result_without_a_matching_call_is_400_in_both_dialects(server):
    err = openai_error(server, {"messages": ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "r"}]})
    assert err["param"] == "messages[1].tool_call_id" and "call_x" in err["message"]
    assert "no earlier assistant message" in ollama_error(
        server, {"messages": ASK + [{"role": "tool", "content": "r", "tool_name": "get_weather"}]})


def test_tool_choice_must_name_a_declared_tool(server):
    err = openai_error(server, {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert err["param"] == "tool_choice"


def test_unenforceable_schema_keywords_are_refused_by_name(server):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}
    err = openai_error(server, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert err["param"] == "response_format" and "`minimum`" in err["message"] and "#/properties/n" in err["message"]
    assert "`minimum`" in ollama_error(server, {"format": schema})


def test_tools_for_a_named_model_without_tool_support_are_refused(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny-nofim", "messages": ASK, "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"

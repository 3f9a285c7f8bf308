"""The OpenAI Responses dialect (POST /v1/responses): the real openai client against a live server on
the tiny GGUF, the event stream as Codex reads it, and the request conversion of real Codex bodies.

The tiny model's weights are random: only `tool_choice` required or named makes its reply a call
(the grammar decides), so tests assert structure (ids, order, numbering, item shapes), never wording.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import get_args

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from server_harness import isolated_env, live_server
from test_tools_server import CITY, HERMES_TEMPLATE
from tiny_gguf import write_tiny_gguf

import router.streaming
from models.catalog import catalog_from_files
from models.errors import ContextLengthExceeded, InvalidRequest
from models.events import Finish, ToolCallDelta, ToolCallStart, Usage
from models.request import ToolCall, ToolResult
from router.app import create_app
from router.dialects.body import parse_data
from router.dialects.responses import InputStreamer, ResponsesFormat, ResponsesRequest
from router.settings import Settings
from router.streaming import CallCollector, GenerationFailed, Outcome

TOOL_MODEL = "tiny-tools"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.", "parameters": CITY}
TIME = {"type": "function", "name": "get_time", "description": "Time now.",
        "parameters": {"type": "object", "properties": {}}}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
RECORDED = Path(__file__).parent / "data" / "agent_requests"
# The SDK's event class of each `type`, to read each event as the SDK does (and name what fails).
EVENT_TYPES = {cls.model_fields["type"].annotation.__args__[0]: cls for cls in get_args(get_args(ResponseStreamEvent)[0])}


def sdk_event(data: dict):
    return EVENT_TYPES[data["type"]].model_validate(data)

# PROTOCOLS-AGENTS.md §2.1: the body Codex sends on a second turn (made-up values, real shape).
CODEX_BODY = {
    "model": "auto", "instructions": "You are Codex, a coding agent.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "function_call", "name": "shell_command", "arguments": "{\"command\":\"ls\"}", "call_id": "call_1"},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nsrc\n"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two entries."}]},
    ],
    "tools": [{"type": "function", "name": "shell_command", "description": "Runs a shell command.", "strict": False,
               "parameters": {"type": "object", "properties": {"command": {"type": "string"},
                                                               "workdir": {"type": "string"}},
                              "required": ["command"], "additionalProperties": False}}],
    "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": None, "store": False, "stream": True,
    "include": [], "prompt_cache_key": "5b1c0f2e-session",
}


@pytest.fixture(scope="module")
def server(tiny_gguf_nofim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses-server")
    tools_gguf = write_tiny_gguf(tmp / "tiny-tools.gguf", fim_family=None, seed=2, chat_template=HERMES_TEMPLATE)
    with isolated_env(tmp):
        catalog = catalog_from_files({"code_edit": tools_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim},
                                     n_ctx=2048)
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as srv:
            yield srv


@pytest.fixture()
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def create(oai, **kw):
    kw.setdefault("model", TOOL_MODEL)
    kw.setdefault("input", "weather in Oslo?")
    kw.setdefault("max_output_tokens", 300)
    kw.setdefault("temperature", 0)
    return oai.responses.create(**kw)


def raw_stream(server, body: dict) -> list[tuple[str, dict]]:
    """(event name, data) of every SSE event, read with plain httpx until the server closes the stream."""
    body = {"model": TOOL_MODEL, "max_output_tokens": 300, "temperature": 0, **body, "stream": True}
    events, name = [], None
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():  # ends only when the server closes the response
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                name = None
    return events


def check_numbering(events: list[tuple[str, dict]], keep_alives: bool = False) -> list[dict]:
    """Every event names its data's type and carries the next sequence_number; the data (checked with the
    SDK's types), without the keep-alives a busy machine adds when the first token is over 5 s late."""
    assert [name for name, _ in events] == [data["type"] for _, data in events]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for _, data in events:
        if data["type"] != "response.failed":  # the SDK's error codes lack context_length_exceeded, which Codex reads
            sdk_event(data)
    datas = [data for _, data in events]
    if keep_alives:
        return datas
    return datas[:2] + [d for d in datas[2:] if d["type"] != "response.in_progress"]


def error_of(server, body: dict) -> dict:
    r = httpx.post(server.url + "/v1/responses", json={"model": TOOL_MODEL, "input": "hi", **body})
    assert r.status_code == 400, r.text
    return r.json()["error"]


# ---------------------------------------------------------------------------------------- text


def test_text_response_is_a_response_object_with_usage(oai):
    raw = oai.responses.with_raw_response.create(model=TOOL_MODEL, input="say hi", max_output_tokens=8, temperature=0)
    assert raw.headers["x-route-model"] == TOOL_MODEL
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response" and response.model == TOOL_MODEL
    assert response.status in ("completed", "incomplete") and response.error is None
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and response.output_text == message.content[0].text
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert response.store is False and response.parallel_tool_calls is True and response.tool_choice == "auto"


def test_text_stream_runs_created_items_completed_in_order_and_closes(server):
    events = check_numbering(raw_stream(server, {"input": "say hi", "max_output_tokens": 12}))
    types = [e["type"] for e in events]
    n = types.count("response.output_text.delta")
    assert n >= 1
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * n, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    created, completed = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert completed["id"] == created["id"] and completed["status"] in ("completed", "incomplete")
    item_id = events[2]["item"]["id"]
    assert all(e.get("item_id", item_id) == item_id for e in events[2:-1])
    assert {e["output_index"] for e in events[2:-1]} == {0}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-4]["text"] == text and events[-3]["part"]["text"] == text
    done = events[-2]["item"]
    assert done["id"] == item_id and done["content"][0]["text"] == text
    assert completed["output"] == [done]
    usage = completed["usage"]
    assert usage["output_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_the_sdk_stream_helper_accumulates_the_final_response(oai):
    with oai.responses.stream(model=TOOL_MODEL, input="say hi", max_output_tokens=10, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.usage.output_tokens > 0


def test_max_output_tokens_makes_it_incomplete_in_both_forms(oai, server):
    response = create(oai, input="tell me a long story", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 2 and response.output[-1].status == "incomplete"
    events = check_numbering(raw_stream(server, {"input": "tell me a long story", "max_output_tokens": 2}))
    assert events[-1]["type"] == "response.completed"  # Codex needs completed even here; the status tells
    assert events[-1]["response"]["status"] == "incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_json_schema_text_format_constrains_the_output(oai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = create(oai, input="ok?", text={"format": {"type": "json_schema", "name": "r", "schema": schema,
                                                         "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"


# ---------------------------------------------------------------------------------------- tools


def test_required_tool_call_is_a_function_call_item_with_string_arguments(oai):
    response = create(oai, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and all(item.type != "message" or item.content[0].text.strip() for item in response.output)
    call = calls[0]
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    assert isinstance(call.arguments, str)
    jsonschema.validate(json.loads(call.arguments), {"get_weather": CITY, "get_time": TIME["parameters"]}[call.name])
    assert response.parallel_tool_calls is False and response.tools[0].name == "get_weather"


def test_named_function_streams_added_argument_deltas_done(server):
    events = check_numbering(raw_stream(server, {"input": "weather?", "tools": [WEATHER, TIME],
                                                 "tool_choice": {"type": "function", "name": "get_weather"},
                                                 "parallel_tool_calls": False}))
    types = [e["type"] for e in events]
    n = types.count("response.function_call_arguments.delta")
    assert n >= 2
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * n, "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    added, done = events[2]["item"], events[-2]["item"]
    assert added["type"] == "function_call" and added["arguments"] == "" and added["status"] == "in_progress"
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert events[-3]["arguments"] == arguments and events[-3]["name"] == "get_weather"
    assert done == {**added, "status": "completed", "arguments": arguments}
    jsonschema.validate(json.loads(done["arguments"]), CITY)
    assert all(e["item_id"] == added["id"] for e in events[3:-2])
    assert events[-1]["response"]["output"] == [done] and events[-1]["response"]["status"] == "completed"


def test_a_history_turn_with_call_and_output_reaches_the_template(oai):
    history = [
        {"role": "user", "content": "weather in Oslo?"},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'},
        {"type": "function_call_output", "call_id": "call_a", "output": [{"type": "input_text", "text": "-3C"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is -3C."}]},
        {"role": "user", "content": "and Rome?"},
    ]
    with_history = create(oai, input=history, tools=[WEATHER], max_output_tokens=4)
    fresh = create(oai, input="and Rome?", tools=[WEATHER], max_output_tokens=4)
    assert with_history.usage.input_tokens > fresh.usage.input_tokens + 20  # the call and its output were rendered


def test_instructions_and_developer_items_become_system_text(oai):
    plain = create(oai, input="hi", max_output_tokens=2)
    instructed = create(oai, input="hi", instructions="Answer in French, briefly.", max_output_tokens=2)
    developer = create(oai, input=[{"role": "developer", "content": "Answer in French, briefly."},
                                   {"role": "user", "content": "hi"}], max_output_tokens=2)
    assert instructed.usage.input_tokens > plain.usage.input_tokens
    assert developer.usage.input_tokens == instructed.usage.input_tokens  # both are one system message
    assert instructed.instructions == "Answer in French, briefly."


def test_a_reasoning_item_with_null_content_is_accepted_and_dropped(oai):
    history = [{"role": "user", "content": "hi"},
               {"type": "reasoning", "summary": [], "content": None, "encrypted_content": None},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
               {"role": "user", "content": "again"}]
    without = [history[0], history[2], history[3]]
    assert create(oai, input=history, max_output_tokens=2).usage.input_tokens == \
        create(oai, input=without, max_output_tokens=2).usage.input_tokens


def test_hosted_tools_are_skipped_with_a_log_line(oai, caplog):
    with caplog.at_level(logging.INFO, logger="router.dialects.responses"):
        response = create(oai, tools=[{"type": "web_search", "external_web_access": True}, WEATHER],
                          tool_choice="required", parallel_tool_calls=False)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert any("tools[0]" in r.getMessage() and "web_search" in r.getMessage() for r in caplog.records)
    alone = create(oai, tools=[{"type": "image_generation"}], max_output_tokens=3)  # nothing left to call: text
    assert all(item.type == "message" for item in alone.output)


def test_namespace_tools_are_called_back_with_name_and_namespace(oai, server):
    namespace = {"type": "namespace", "name": "weather", "description": "Weather tools.", "tools": [WEATHER]}
    response = create(oai, tools=[namespace], tool_choice="required", parallel_tool_calls=False)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert (call.name, call.namespace) == ("get_weather", "weather")
    jsonschema.validate(json.loads(call.arguments), CITY)
    events = check_numbering(raw_stream(server, {"input": "weather?", "tools": [namespace],
                                                 "tool_choice": {"type": "function", "name": "weather.get_weather"}}))
    done = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    assert (done["name"], done["namespace"]) == ("get_weather", "weather")
    history = [{"role": "user", "content": "weather?"},
               {"type": "function_call", "call_id": "c1", "name": "get_weather", "namespace": "weather",
                "arguments": done["arguments"]},
               {"type": "function_call_output", "call_id": "c1", "output": "-3C"},
               {"role": "user", "content": "thanks"}]
    assert create(oai, input=history, tools=[namespace], max_output_tokens=2).status in ("completed", "incomplete")


def test_custom_tools_are_answered_with_a_custom_tool_call_of_raw_input(oai, server):
    """Random weights never close a free string, so the call is cut by the limit: incomplete, yet unwrapped,
    and streamed as it comes (Codex waits at most 300 s for an event)."""
    events = check_numbering(raw_stream(server, {"input": "patch it", "tools": [PATCH],
                                                 "tool_choice": {"type": "custom", "name": "apply_patch"}}))
    types = [e["type"] for e in events]
    n = types.count("response.custom_tool_call_input.delta")
    assert n > 10
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.custom_tool_call_input.delta"] * n, "response.custom_tool_call_input.done",
                     "response.output_item.done", "response.completed"]
    added, done = events[2]["item"], events[-2]["item"]
    assert added["type"] == done["type"] == "custom_tool_call" and added["input"] == "" and added["id"].startswith("ctc_")
    assert (done["name"], done["status"], done["call_id"]) == ("apply_patch", "incomplete", added["call_id"])
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")
    assert streamed == events[-3]["input"] == done["input"] and '"input"' not in done["input"]
    history = [{"role": "user", "content": "patch it"},
               {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"},
               {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done"},
               {"role": "user", "content": "thanks"}]
    assert create(oai, input=history, tools=[PATCH], max_output_tokens=2).status in ("completed", "incomplete")


# ---------------------------------------------------------------------------------------- refusals


def test_previous_response_id_is_refused_by_name(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        create(oai, previous_response_id="resp_123")
    assert caught.value.body["param"] == "previous_response_id" and "store: false" in caught.value.body["message"]


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"input": [{"role": "user", "content": "hi"}, {"type": "bogus"}]}, "input[1].type", "`bogus`"),
    ({"input": [{"type": "message", "role": "robot", "content": "hi"}]}, "input[0].role", "Invalid value"),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "nope", "output": "x"}]},
     "input[1].call_id", "nope"),
    ({"input": [{"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
     "input[1].arguments", "not JSON"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type",
     "input_file"),
    ({"input": [{"content": "no role"}]}, "input[0].type", "neither"),
    ({"input": [{"type": "message", "role": "developer", "content": "only instructions"}]}, "input", "user message"),
    ({"tools": [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "array"}}]},
     "tools[1].parameters", "object"),
    ({"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f", "parameters": "x"}]}]},
     "tools[0].tools[0].parameters", "JSON Schema object"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "nope"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "none, auto, required"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "integer", "minimum": 3}}}},
     "text.format.schema", "`minimum`"),
    ({"background": True}, "background", "background"),
    ({"truncation": "auto"}, "truncation", "never cut"),
    ({"top_logprobs": 3}, "top_logprobs", "top_logprobs"),
    ({"include": ["message.output_text.logprobs"]}, "include", "logprobs"),
    ({"frequency": 1}, "frequency", "Unrecognized request argument"),
])
def test_bad_requests_are_400_naming_the_field(server, body, param, needle):
    err = error_of(server, body)
    assert err["param"] == param and needle in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_fields_codex_sends_are_accepted(oai):
    response = create(oai, max_output_tokens=2, store=True, include=["reasoning.encrypted_content"],
                      prompt_cache_key="session", reasoning={"effort": "low", "summary": "auto"}, service_tier="auto",
                      metadata={"k": "v"}, user="u", safety_identifier="s", truncation="disabled",
                      extra_body={"client_metadata": {"session_id": "s"}}, text={"verbosity": "low"})
    assert response.store is False and response.metadata == {"k": "v"}  # nothing is kept, and it says so


def test_a_prompt_over_the_context_is_400_context_length_exceeded(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        create(oai, input="x " * 3000, max_output_tokens=4)
    assert caught.value.code == "context_length_exceeded"


def test_a_real_codex_request_over_the_context_is_refused_with_the_code_codex_treats_as_final(server):
    body = json.loads((RECORDED / "codex_responses_turn2.json").read_text())
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 400, r.text[:500]
    assert r.json()["error"]["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------ early headers, keep-alives


@pytest.fixture()
def early_headers(monkeypatch):
    """Headers and head() at once, and keep-alives as fast as the loop turns: the long-prompt path, made short."""
    monkeypatch.setattr(router.streaming, "EARLY_HEADERS_S", 0.0)
    monkeypatch.setattr(router.streaming, "KEEPALIVE_S", 0.005)


def test_keepalives_are_numbered_in_progress_events_before_the_first_item(server, early_headers):
    busy = {"model": TOOL_MODEL, "input": "x " * 300, "max_output_tokens": 64, "tools": [PATCH],
            "tool_choice": {"type": "custom", "name": "apply_patch"}}  # a free string: all 64 tokens, no early stop
    answers = []
    blocker = threading.Thread(target=lambda: answers.append(httpx.post(server.url + "/v1/responses", json=busy,
                                                                        timeout=60)), daemon=True)
    blocker.start()  # holds the model's one worker, so the streamed request waits in its queue
    deadline = time.monotonic() + 30
    while not any(st.generating for st in server.state.pool.status()):
        assert blocker.is_alive() and time.monotonic() < deadline, answers and answers[0].text
        time.sleep(0.005)
    events = check_numbering(raw_stream(server, {"input": "say hi", "max_output_tokens": 4}), keep_alives=True)
    blocker.join()
    assert answers[0].status_code == 200, answers[0].text
    types = [e["type"] for e in events]
    first_item = types.index("response.output_item.added")
    assert types[0] == "response.created" and set(types[1:first_item]) == {"response.in_progress"}
    assert first_item > 2, "no keep-alive came while the request waited"
    assert types[-1] == "response.completed"


def test_a_failure_after_early_headers_is_response_failed_with_its_code(server, early_headers):
    events = check_numbering(raw_stream(server, {"input": "x " * 3000}))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "context_length_exceeded"
    assert failed["id"] == events[0]["response"]["id"]


# ---------------------------------------------------------------------------------------- /v1/route


def test_route_reads_a_responses_body_and_decides_as_for_chat(server):
    ask = "fix the bug in this function:\ndef div(a, b):\n    return a / b\n"
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}]
    chat = httpx.post(server.url + "/v1/route", json={"endpoint": "/v1/chat/completions", "body": {
        "model": "auto", "messages": [{"role": "user", "content": ask}],
        "tools": [{"type": "function", "function": {"name": "shell", "parameters": tools[0]["parameters"]}}]}})
    responses = httpx.post(server.url + "/v1/route", json={"endpoint": "/v1/responses", "body": {
        "model": "auto", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": ask}]}],
        "tools": tools}})
    assert chat.status_code == responses.status_code == 200, (chat.text, responses.text)
    decided, asked = chat.json(), responses.json()
    assert asked["endpoint"] == "/v1/responses"
    assert (asked["label"], asked["model"]) == (decided["label"], decided["model"])
    bad = httpx.post(server.url + "/v1/route", json={"endpoint": "/v1/responses", "body": {"input": [{"type": "x"}]}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input[0].type"


# ---------------------------------------------------------------------------------------- conversion


def test_a_codex_body_converts_to_the_internal_conversation():
    req, internal = parse_data(ResponsesRequest, CODEX_BODY)
    assert internal.endpoint == "/v1/responses" and internal.kind == "chat" and internal.stream
    assert [m.role for m in internal.messages] == ["system", "system", "user", "user", "assistant", "tool", "assistant"]
    assert internal.messages[0].text == "You are Codex, a coding agent." and internal.messages[1].text == "<permissions>"
    assert internal.messages[4].tool_calls == (ToolCall("call_1", "shell_command", {"command": "ls"}),)
    assert internal.messages[5].tool_results == (ToolResult("call_1", "README.md\nsrc\n", name="shell_command"),)
    assert internal.messages[6].text == "Two entries."
    assert [t.name for t in internal.tools] == ["shell_command"] and internal.tools[0].parameters["required"] == ["command"]
    assert (internal.tool_choice.mode, internal.tool_choice.parallel) == ("auto", False)


def test_consecutive_calls_merge_into_the_assistant_turn_before_them():
    _, internal = parse_data(ResponsesRequest, {"input": [
        {"role": "user", "content": "two things"},
        {"role": "assistant", "content": "Checking both."},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": '{"x": 1}', "namespace": "ns"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call_output", "call_id": "b", "output": "2"},
    ]})
    assert [m.role for m in internal.messages] == ["user", "assistant", "tool", "tool"]
    assistant = internal.messages[1]
    assert assistant.text == "Checking both."
    assert assistant.tool_calls == (ToolCall("a", "f", {}), ToolCall("b", "ns.g", {"x": 1}))
    assert internal.messages[3].tool_results[0].name == "ns.g"


@pytest.mark.parametrize("name", sorted(p.stem for p in RECORDED.glob("codex_*.json") if not p.stem.endswith(".headers")))
def test_recorded_codex_bodies_parse(name):
    body = json.loads((RECORDED / f"{name}.json").read_text())
    req, internal = parse_data(ResponsesRequest, body)
    assert internal.messages[-1].role in ("user", "tool") and any(m.role == "user" for m in internal.messages)
    assert internal.tools, "Codex always declares tools"
    names = {t.name for t in internal.tools}
    assert len(names) == len(internal.tools)
    namespaced = {n for n, origin in req.tool_table.origins.items() if origin.namespace}
    assert namespaced and all(n.count(".") == 1 for n in namespaced)
    declared = json.dumps(body)
    assert all(f'"name": "{origin.name}"' in declared for origin in req.tool_table.origins.values())
    if "turn2" in name:
        (call,) = [c for m in internal.messages for c in m.tool_calls]
        assert call.name == "exec_command" and isinstance(call.arguments, dict) and "cmd" in call.arguments
        assert internal.messages[-1].tool_results[0].call_id == call.id


# ---------------------------------------------------------------------------------------- the format


def format_for(body: dict) -> ResponsesFormat:
    req, _ = parse_data(ResponsesRequest, {"model": "m", "input": "hi", **body})
    return ResponsesFormat("m", req)


def test_the_sdk_accumulates_the_format_into_the_final_response():
    tools = [WEATHER, {"type": "namespace", "name": "ns", "description": "Clock.", "tools": [TIME]}, PATCH]
    fmt = format_for({"tools": tools})
    out = [fmt.head(), fmt.keepalive(), fmt.text(" \n"), fmt.text("Let me"), fmt.text(" check."),
           fmt.tool_call_start(ToolCallStart(0, "call_a", "get_weather")), fmt.tool_call_delta(ToolCallDelta(0, '{"city": ')),
           fmt.tool_call_delta(ToolCallDelta(0, '"Oslo"}')), fmt.text("\n"),
           fmt.tool_call_start(ToolCallStart(1, "call_b", "ns.get_time")), fmt.tool_call_delta(ToolCallDelta(1, "{}")),
           fmt.tool_call_start(ToolCallStart(2, "call_c", "apply_patch")),
           fmt.tool_call_delta(ToolCallDelta(2, '{"input": "*** Begin')), fmt.tool_call_delta(ToolCallDelta(2, ' Patch"}')),
           fmt.tail(Finish("tool_calls", Usage(prompt_tokens=12, completion_tokens=7, cached_tokens=5)))]
    frames = [json.loads(line[len("data: "):]) for line in b"".join(out).decode().split("\n")
              if line.startswith("data: ")]
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    assert [f["delta"] for f in frames if f["type"] == "response.custom_tool_call_input.delta"] == ["*** Begin", " Patch"]
    state = ResponseStreamState(input_tools=tools, text_format=openai.omit)
    for frame in frames:
        state.handle_event(sdk_event(frame))
    final = frames[-1]["response"]
    Response.model_validate(final)
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call", "custom_tool_call"]
    message, weather, clock, patch = final["output"]
    assert message["content"][0]["text"] == " \nLet me check."
    assert (weather["name"], weather["arguments"], "namespace" in weather) == ("get_weather", '{"city": "Oslo"}', False)
    assert (clock["name"], clock["namespace"], clock["call_id"]) == ("get_time", "ns", "call_b")
    assert (patch["name"], patch["input"], patch["call_id"]) == ("apply_patch", "*** Begin Patch", "call_c")
    assert final["usage"] == {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 7},
                              "output_tokens": 7,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19}
    assert sum(f["type"] == "response.in_progress" for f in frames) == 2  # head's, and one keep-alive


def test_a_custom_input_is_unwrapped_as_its_json_arrives():
    streamer = InputStreamer()
    pieces = ['{"input"', ' : "a\\', 'nb \\u00', 'e9 \\ud83d', '\\ude00 q\\"', 'z"}', " "]
    assert [streamer.feed(p) for p in pieces] == ["", "a", "\nb ", "é ", "😀 q\"", "z", ""]
    assert streamer.text == json.loads("".join(pieces))["input"]
    assert InputStreamer().feed('{"other": 1}') == ""  # not the shape asked for: the whole text comes at the end


def test_the_body_holds_the_same_items():
    fmt = format_for({"tools": [{"type": "namespace", "name": "ns", "description": "Clock.", "tools": [TIME]}, PATCH]})
    calls = CallCollector()
    for event in [ToolCallStart(0, "call_b", "ns.get_time"), ToolCallDelta(0, "{}"),
                  ToolCallStart(1, "call_c", "apply_patch"), ToolCallDelta(1, '{"input": "raw"}')]:
        calls.add(event)
    body = fmt.body(Outcome("\n", Finish("length", Usage(3, 4)), calls.calls))
    response = Response.model_validate(body)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert [(i.type, i.name, i.status) for i in response.output] == [
        ("function_call", "get_time", "completed"), ("custom_tool_call", "apply_patch", "incomplete")]
    assert response.output[0].namespace == "ns" and response.output[1].input == "raw"


@pytest.mark.parametrize(("err", "code"), [(ContextLengthExceeded("too long"), "context_length_exceeded"),
                                           (GenerationFailed("boom"), "server_error"),
                                           (InvalidRequest("odd"), "server_error")])
def test_a_mid_stream_failure_is_response_failed_with_a_code(err, code):
    fmt = format_for({})
    out = (fmt.head() + fmt.text("partial") + fmt.error(err)).decode()
    frames = [json.loads(line[len("data: "):]) for line in out.split("\n") if line.startswith("data: ")]
    failed = frames[-1]
    assert failed["type"] == "response.failed" and failed["sequence_number"] == len(frames) - 1
    assert failed["response"]["error"] == {"code": code, "message": err.message}
    assert failed["response"]["status"] == "failed"
    if code == "server_error":
        sdk_event(failed)

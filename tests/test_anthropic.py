"""Anthropic Messages (/v1/messages, count_tokens) through the real `anthropic` SDK and raw SSE.

The tiny model's weights are random, so only a grammar makes its output a tool call: with
`tool_choice` any or tool, every reply must be a valid tool_use of a declared tool. The raw SSE
checks assert the event grammar Claude Code relies on (blocks never interleave, indices count
up, message_delta carries stop_reason and usage, message_stop ends the stream).
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from agent_clis import anthropic_stream_problems
from server_harness import isolated_env, live_server
from test_tools_server import CITY, HERMES_TEMPLATE, TOOL_MODEL
from tiny_gguf import write_tiny_gguf

import router.streaming
from models.catalog import catalog_from_files
from router.app import create_app
from router.dialects.anthropic import BILLING_HEADER, MessagesRequest
from router.settings import Settings

TOOLS = [
    {"name": "get_weather", "description": "Weather in a city.", "input_schema": CITY},
    {"name": "get_time", "description": "Time now.", "input_schema": {"type": "object", "properties": {}}},
]
ASK = [{"role": "user", "content": "weather in Oslo?"}]
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli; cch={};"
KEY = "sekrit"


@pytest.fixture(scope="module")
def server(tiny_gguf_nofim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anthropic-server")
    tools_gguf = write_tiny_gguf(tmp / "tiny-tools.gguf", fim_family=None, seed=2, chat_template=HERMES_TEMPLATE)
    with isolated_env(tmp):
        catalog = catalog_from_files({"code_edit": tools_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim},
                                     n_ctx=1024)
        app = create_app(Settings(idle_ttl_s=0, api_key=KEY), catalog=catalog)
        with live_server(app) as srv:
            yield srv


@pytest.fixture()
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


def create(client, **kw):
    kw.setdefault("model", TOOL_MODEL)
    kw.setdefault("messages", ASK)
    kw.setdefault("max_tokens", 300)
    return client.messages.create(**kw)


def sse_events(server, body: dict, headers: dict | None = None) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a streamed /v1/messages, as Claude Code posts it (?beta=true)."""
    out = []
    with httpx.stream("POST", server.url + "/v1/messages?beta=true", json={**body, "stream": True}, timeout=60,
                      headers={"x-api-key": KEY, "anthropic-version": "2023-06-01", **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                assert data["type"] == name, (name, data)
                out.append((name, data))
    return out


def assert_well_formed(events: list[tuple[str, dict]]) -> None:
    """The Messages stream grammar, by the checker the real-CLI tests use (tests/agent_clis.py)."""
    problems = anthropic_stream_problems([{"event": name, "data": data} for name, data in events])
    assert problems == [], problems
    assert events[-2][1]["usage"]["output_tokens"] > 0


def test_a_text_reply_through_the_sdk(client):
    raw = client.messages.with_raw_response.create(model=TOOL_MODEL, max_tokens=12, messages=ASK)
    message = raw.parse()
    assert raw.headers["x-route-model"] == TOOL_MODEL
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert all(block.type == "text" for block in message.content)
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_streamed_text_is_well_formed_and_matches_the_sdks_final_message(server, client):
    events = sse_events(server, {"model": TOOL_MODEL, "max_tokens": 16, "messages": ASK, "temperature": 0})
    # The newest SDK dropped `temperature` from its signatures; older clients (and Claude Code) still send it.
    assert_well_formed(events)
    assert events[1][0] == "ping"  # sent right after message_start, while the prompt is evaluated
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    with client.messages.stream(model=TOOL_MODEL, max_tokens=16, messages=ASK, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == streamed
    assert final.usage.output_tokens == events[-2][1]["usage"]["output_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_any_gives_a_valid_tool_use(client, stream):
    kw = dict(tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True},
              extra_body={"temperature": 0})
    if stream:
        with client.messages.stream(model=TOOL_MODEL, max_tokens=300, messages=ASK, **kw) as s:
            message = s.get_final_message()
    else:
        message = create(client, **kw)
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    schemas = {t["name"]: t["input_schema"] for t in TOOLS}
    jsonschema.validate(use.input, schemas[use.name])


def test_streamed_tool_use_sends_its_input_as_json_pieces(server):
    events = sse_events(server, {"model": TOOL_MODEL, "max_tokens": 300, "messages": ASK, "tools": TOOLS,
                                 "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
                                 "temperature": 0})
    assert_well_formed(events)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts[-1]["type"] == "tool_use" and starts[-1]["name"] == "get_weather" and starts[-1]["input"] == {}
    index = next(d["index"] for n, d in events if n == "content_block_start" and d["content_block"]["type"] == "tool_use")
    pieces = [d["delta"]["partial_json"] for n, d in events
              if n == "content_block_delta" and d["index"] == index and d["delta"]["type"] == "input_json_delta"]
    assert all(d["delta"]["type"] == "input_json_delta" for n, d in events if n == "content_block_delta"
               and d["index"] == index)
    jsonschema.validate(json.loads("".join(pieces)), CITY)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_tool_result_turn_is_answered(client):
    history = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Oslo", "days": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                                     {"type": "text", "text": "and tomorrow?"}]},
    ]
    message = create(client, messages=history, tools=TOOLS, max_tokens=8)
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_tool_results_come_before_the_text_of_their_turn():
    body = {"model": "auto", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                          {"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                     {"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": "text", "text": "12:00"}], "is_error": True}]},
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ok"},
    ], "tools": TOOLS}
    request = MessagesRequest.model_validate(body).to_request()
    roles = [m.role for m in request.messages]
    assert roles == ["user", "assistant", "tool", "user", "system", "user"]
    assert request.messages[1].tool_calls[0].name == "get_time" and request.messages[1].text == ""
    (result,) = request.messages[2].tool_results
    assert (result.call_id, result.content, result.is_error) == ("t1", "12:00", True)


def test_the_billing_header_is_dropped_before_templating(client):
    """Claude Code's `cch=` changes on every request: left in, it would change the prompt's tokens."""
    system = "You are a careful assistant."

    def count(system_value):
        return client.messages.count_tokens(model=TOOL_MODEL, messages=ASK, system=system_value).input_tokens

    plain = count(system)
    with_billing = [count([{"type": "text", "text": BILLING.format(cch)}, {"type": "text", "text": system}])
                    for cch in ("1a2b3", "ffee0")]
    assert with_billing == [plain, plain]
    assert count(BILLING.format("77777") + "\n" + system) == plain
    assert count("a much longer system prompt than the other one, to be sure counting counts") > plain


def test_count_tokens_counts_tools_too(client):
    bare = client.messages.count_tokens(model=TOOL_MODEL, messages=ASK).input_tokens
    with_tools = client.messages.count_tokens(model=TOOL_MODEL, messages=ASK, tools=TOOLS).input_tokens
    assert 0 < bare < with_tools


def test_claude_codes_extra_fields_headers_and_query_are_accepted(server):
    body = {"model": TOOL_MODEL, "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "metadata": {"user_id": "u"}, "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}, "speed": "fast", "container": None}
    headers = {"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"}
    assert_well_formed(sse_events(server, body, headers))


def test_stop_sequences_are_honoured_and_reported(client):
    stops = list("abcdefghijklmnopqrstuvwxyz0123 ")
    message = create(client, stop_sequences=stops, extra_body={"temperature": 0}, max_tokens=200,
                     messages=[{"role": "user", "content": "say something"}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence in stops
    assert message.stop_sequence not in "".join(b.text for b in message.content)


@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_a_json_schema_output_format_constrains_the_reply(client, where):
    schema = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}, "ok": {"type": "boolean"}},
              "required": ["city", "ok"], "additionalProperties": False}
    fmt = {"type": "json_schema", "schema": schema}
    extra = {"output_config": {"format": fmt, "effort": "low"}} if where == "output_config" else {"output_format": fmt}
    message = create(client, max_tokens=200, extra_body={**extra, "temperature": 1.0})
    jsonschema.validate(json.loads("".join(b.text for b in message.content)), schema)


def test_a_server_tool_is_skipped_not_refused(client):
    message = create(client, tools=[*TOOLS, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
                     tool_choice={"type": "any"}, extra_body={"temperature": 0})
    assert message.stop_reason == "tool_use"
    assert {b.name for b in message.content if b.type == "tool_use"} <= {"get_weather", "get_time"}


def test_errors_come_in_anthropics_envelope(server, client):
    with pytest.raises(anthropic.NotFoundError) as err:
        create(client, model="no-such-model")
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        create(client, tool_choice={"type": "tool", "name": "nope"}, tools=TOOLS)
    assert "nope" in err.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        create(client, messages=[{"role": "user", "content": "word " * 2000}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "context" in err.value.body["error"]["message"]
    missing = httpx.post(server.url + "/v1/messages", json={"model": TOOL_MODEL, "messages": ASK},
                         headers={"x-api-key": KEY})
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["message"]
    broken = httpx.post(server.url + "/v1/messages", content=b'{"model": ', headers={"x-api-key": KEY})
    assert broken.status_code == 400 and broken.json()["type"] == "error"


def test_auth_by_x_api_key_or_bearer(server):
    body = {"model": TOOL_MODEL, "max_tokens": 2, "messages": ASK}
    assert httpx.post(server.url + "/v1/messages", json=body, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.post(server.url + "/v1/messages", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    wrong = httpx.post(server.url + "/v1/messages", json=body, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0).messages.create(**body)


def test_claude_codes_connection_check_gets_a_200(server):
    assert httpx.head(server.url + "/").status_code == 200


def test_a_slow_first_token_gets_pings_then_the_reply(server, monkeypatch):
    """Headers and pings go out before the first token once it is late (here: at once)."""
    monkeypatch.setattr(router.streaming, "EARLY_HEADERS_S", 0.0)
    monkeypatch.setattr(router.streaming, "KEEPALIVE_S", 0.0005)
    long_prompt = [{"role": "user", "content": "word " * 100}]  # a prefill of some milliseconds
    events = sse_events(server, {"model": TOOL_MODEL, "max_tokens": 8, "messages": long_prompt})
    assert events[-1][0] != "error", events[-1]
    assert_well_formed(events)
    first_block = next(i for i, (n, _) in enumerate(events) if n == "content_block_start")
    assert [n for n, _ in events[1:first_block]].count("ping") >= 2


def test_a_failure_after_early_headers_is_an_error_event(server, monkeypatch):
    monkeypatch.setattr(router.streaming, "EARLY_HEADERS_S", 0.0)
    events = sse_events(server, {"model": TOOL_MODEL, "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "word " * 2000}]})
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "invalid_request_error" and "context" in events[-1][1]["error"]["message"]


@pytest.mark.parametrize("name", ["claude_code_messages", "claude_code_messages_turn2"])
def test_recorded_claude_code_requests_parse(name):
    """The bodies Claude Code 2.1.197 really sent (tests/data/agent_requests): every beta field accepted,
    the billing line gone, its 24 tools and its mid-conversation system message kept."""
    body = json.loads((Path(__file__).parent / "data" / "agent_requests" / f"{name}.json").read_text())
    request = MessagesRequest.model_validate(body).to_request()
    assert request.messages[0].role == "system" and BILLING_HEADER not in request.messages[0].text
    assert "Claude Code" in request.messages[0].text
    assert [t.name for t in request.tools] == [t["name"] for t in body["tools"]] and len(request.tools) == 24
    assert request.tool_choice.mode == "auto" and request.stream is True
    assert request.params.max_tokens == body["max_tokens"]
    roles = [m.role for m in request.messages]
    assert roles.count("system") == 2  # the system prompt, and Claude Code's mid-conversation system message
    if name.endswith("turn2"):
        (call,) = [c for m in request.messages for c in m.tool_calls]
        (result,) = [r for m in request.messages for r in m.tool_results]
        assert result.call_id == call.id


def test_v1_route_reads_a_messages_body(server):
    body = {"model": "claude-opus-4-5", "max_tokens": 5, "messages": ASK, "tools": TOOLS}
    decision = httpx.post(server.url + "/v1/route", json={"endpoint": "/v1/messages", "body": body},
                          headers={"x-api-key": KEY})
    assert decision.status_code == 200, decision.text
    assert decision.json()["endpoint"] == "/v1/messages"
    assert "matches alias `claude-*`" in decision.json()["reasons"][0]


def test_a_tool_property_with_only_a_description_takes_any_value(client):
    """Claude Code's Workflow tool declares `args` with a description and no type: any JSON value."""
    schema = {"type": "object", "properties": {"args": {"description": "anything, verbatim"}, "n": {}},
              "required": ["args", "n"]}
    message = create(client, tools=[{"name": "Workflow", "input_schema": schema}],
                     tool_choice={"type": "tool", "name": "Workflow"}, extra_body={"temperature": 0})
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert set(use.input) == {"args", "n"}

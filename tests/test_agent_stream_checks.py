"""The stream checks tests/test_agent_clis.py applies to the router's answers to Claude Code and
Codex: well-formed streams pass, and each kind of break is named. No CLI, no model."""

from __future__ import annotations

import json

import pytest

from agent_clis import RequestTap, TappedRequest, anthropic_stream_problems, responses_stream_problems


def sse(events: list[tuple[str | None, dict]]) -> str:
    return "".join((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events)


def tapped(text: str) -> TappedRequest:
    entry = TappedRequest("POST", "/v1/x")
    RequestTap._note_answer(entry, text)
    return entry


def anthropic(tool: bool = True) -> list[tuple[str, dict]]:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 0}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Wri"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ting."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    if tool:
        events += [
            ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": "Write", "input": {}}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                "type": "input_json_delta", "partial_json": '{"file_path": "hello.py", '}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                "type": "input_json_delta", "partial_json": '"content": "print(1)"}'}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ]
    return events + [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn",
                                                              "stop_sequence": None}, "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def responses(tool: bool = True) -> list[tuple[str, dict]]:
    base = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "output": [],
            "parallel_tool_calls": False, "tool_choice": "auto", "tools": []}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "Done.", "annotations": []}]}
    call = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "exec_command",
            "arguments": '{"cmd": "ls"}'}
    events = [
        ("response.created", {"type": "response.created", "response": dict(base, status="in_progress")}),
        ("response.in_progress", {"type": "response.in_progress", "response": dict(base, status="in_progress")}),
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                        "item": dict(message, status="in_progress", content=[])}),
        ("response.content_part.added", {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
                                         "content_index": 0, "part": {"type": "output_text", "text": ""}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                                        "content_index": 0, "delta": "Done.", "logprobs": []}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": message}),
    ]
    output = [message]
    if tool:
        events += [
            ("response.output_item.added", {"type": "response.output_item.added", "output_index": 1,
                                            "item": dict(call, status="in_progress", arguments="")}),
            ("response.function_call_arguments.delta", {"type": "response.function_call_arguments.delta",
                                                        "item_id": "fc_1", "output_index": 1, "delta": call["arguments"]}),
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": 1, "item": call}),
        ]
        output.append(call)
    events.append(("response.completed", {"type": "response.completed", "response": dict(
        base, status="completed", output=output,
        usage={"input_tokens": 5, "output_tokens": 3, "total_tokens": 8})}))
    return [(name, dict(data, sequence_number=i)) for i, (name, data) in enumerate(events)]


@pytest.mark.parametrize("tool", [True, False])
def test_a_well_formed_anthropic_stream_passes_and_is_read(tool):
    entry = tapped(sse(anthropic(tool)))
    assert anthropic_stream_problems(entry.events) == []
    assert entry.text == "Writing."
    assert entry.tool_calls == (["Write"] if tool else [])
    assert entry.tool_call_ids == (["toolu_1"] if tool else [])
    assert entry.tool_args == (['{"file_path": "hello.py", "content": "print(1)"}'] if tool else [])
    assert entry.finish_reasons == ["tool_use" if tool else "end_turn"]


@pytest.mark.parametrize("tool", [True, False])
def test_a_well_formed_responses_stream_passes_and_is_read(tool):
    entry = tapped(sse(responses(tool)))
    assert responses_stream_problems(entry.events) == []
    assert entry.text == "Done."
    assert entry.tool_call_ids == (["call_1"] if tool else [])
    assert entry.tool_args == (['{"cmd": "ls"}'] if tool else [])
    assert entry.finish_reasons == ["completed"]


def _drop(events, kind, nth=0):
    hits = [i for i, (_, d) in enumerate(events) if d["type"] == kind]
    return events[:hits[nth]] + events[hits[nth] + 1:]


@pytest.mark.parametrize("breakage, expected", [
    (lambda ev: ev[1:], "first event"),
    (lambda ev: ev[:-1], "last event"),
    (lambda ev: _drop(ev, "content_block_stop"), "starts before block 0 stopped"),
    (lambda ev: _drop(ev, "message_delta"), "0 message_delta events"),
    (lambda ev: [(n, d) if d["type"] != "message_delta" else (n, {**d, "delta": {"stop_reason": "end_turn"}})
                 for n, d in ev], "stop_reason 'end_turn' with 1 tool_use"),
    (lambda ev: [(n, d) if d["type"] != "message_delta" else (n, {**d, "usage": {}}) for n, d in ev],
     "output_tokens is not an int"),
    (lambda ev: [(n, d) if d.get("delta", {}).get("type") != "input_json_delta"
                 else (n, {**d, "delta": {**d["delta"], "partial_json": "{"}}) for n, d in ev], "does not parse"),
    (lambda ev: [("message", d) if d["type"] == "ping" else (n, d) for n, d in ev], "`event: message`"),
    (lambda ev: [(n, d) if d["type"] != "content_block_start" or d["index"] != 1 else (n, {**d, "index": 3})
                 for n, d in ev], "block index 3, expected 1"),
])
def test_a_broken_anthropic_stream_is_named(breakage, expected):
    problems = anthropic_stream_problems(tapped(sse(breakage(anthropic()))).events)
    assert any(expected in p for p in problems), problems


def _renumber(events):
    return [(n, dict(d, sequence_number=i)) for i, (n, d) in enumerate(events)]


@pytest.mark.parametrize("breakage, expected", [
    (lambda ev: _renumber(ev[1:]), "first event"),
    (lambda ev: _renumber(ev[:-1]), "last event"),
    (lambda ev: ev[:2] + ev[3:], "sequence_number"),
    (lambda ev: _renumber(_drop(ev, "response.output_item.done")), "added before item 0 was done"),
    (lambda ev: [(n, d) if d["type"] != "response.output_item.done" or d["output_index"] != 1
                 else (n, {**d, "item": {**d["item"], "arguments": {"cmd": "ls"}}}) for n, d in ev],
     "function_call item Codex would skip"),
    (lambda ev: _renumber(ev[:-1] + [("response.failed", {"type": "response.failed", "response": {
        "id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": "x"}}})]), "response.failed"),
    (lambda ev: [(n, d) if d["type"] != "response.completed"
                 else (n, {**d, "response": {**d["response"], "usage": {"input_tokens": 1}}}) for n, d in ev],
     "integer token counts"),
])
def test_a_broken_responses_stream_is_named(breakage, expected):
    problems = responses_stream_problems(tapped(sse(breakage(responses()))).events)
    assert any(expected in p for p in problems), problems


def test_sse_comments_and_done_are_skipped_and_requests_note_tool_results():
    text = ": keep-alive\n\n" + sse(anthropic(False)) + "data: [DONE]\n\n"
    assert anthropic_stream_problems(tapped(text).events) == []
    entry = TappedRequest("POST", "/v1/messages")
    RequestTap._note_body(entry, json.dumps({"model": "claude-x", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}).encode())
    assert entry.tool_results == ["toolu_1"]
    entry = TappedRequest("POST", "/v1/responses")
    RequestTap._note_body(entry, json.dumps({"model": "auto", "input": [
        {"type": "function_call", "call_id": "call_1", "name": "x", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"}]}).encode())
    assert entry.tool_results == ["call_1"]

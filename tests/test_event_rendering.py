"""Each dialect renders the generation event stream as its real client reads it.

No backend emits tool-call events yet (tool-call parsing is the next issue), so the formats are
driven with events here and read back with the openai and ollama packages' own types.
"""

from __future__ import annotations

import json

import ollama
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from models.events import Finish, TextDelta, ToolCallDelta, ToolCallStart, Usage
from router.dialects.ollama import OllamaFormat
from router.dialects.openai import OpenAIFormat
from router.streaming import CallCollector, Outcome

EVENTS = [
    TextDelta("Let me check."),
    ToolCallStart(0, "call_a", "get_weather"),
    ToolCallDelta(0, '{"city": '),
    ToolCallDelta(0, '"Oslo"}'),
    ToolCallStart(1, "call_b", "get_time"),
    ToolCallDelta(1, "{}"),
]
FINISH = Finish("tool_calls", Usage(prompt_tokens=12, completion_tokens=7))


def render(fmt) -> list[bytes]:
    """What the one stream path writes for EVENTS (router/streaming.py `_stream` dispatches the same way)."""
    out = [fmt.head()]
    for event in EVENTS:
        out.append(fmt.text(event.text) if isinstance(event, TextDelta)
                   else fmt.tool_call_start(event) if isinstance(event, ToolCallStart) else fmt.tool_call_delta(event))
    return out + [fmt.tail(FINISH)]


def outcome() -> Outcome:
    calls = CallCollector()
    for event in EVENTS[1:]:
        calls.add(event)
    return Outcome("Let me check.", FINISH, calls.calls)


def test_openai_stream_accumulates_into_whole_calls_with_the_sdk():
    state = ChatCompletionStreamState()
    data = b"".join(render(OpenAIFormat(True, "m", include_usage=True))).decode()
    frames = [line[len("data: "):] for line in data.split("\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    for frame in frames[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate_json(frame))
    done = state.get_final_completion()
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name) for c in message.tool_calls] == [("call_a", "get_weather"), ("call_b", "get_time")]
    assert [json.loads(c.function.arguments) for c in message.tool_calls] == [{"city": "Oslo"}, {}]
    assert message.content == "Let me check."
    assert done.usage.prompt_tokens == 12 and done.usage.completion_tokens == 7


def test_openai_body_carries_the_calls():
    body = ChatCompletion.model_validate(OpenAIFormat(True, "m", include_usage=False).body(outcome()))
    assert body.choices[0].finish_reason == "tool_calls"
    assert json.loads(body.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}


def test_ollama_sends_whole_calls_with_object_arguments_on_the_last_line():
    lines = [line for chunk in render(OllamaFormat("m", chat=True)) for line in chunk.decode().splitlines()]
    last = ollama.ChatResponse.model_validate_json(lines[-1])
    assert last.done and last.done_reason == "stop"
    assert [(c.function.name, dict(c.function.arguments)) for c in last.message.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {})]
    non_streamed = ollama.ChatResponse.model_validate(OllamaFormat("m", chat=True).body(outcome()))
    assert non_streamed.message.tool_calls[0].function.arguments == {"city": "Oslo"}

"""The tool-call parser on recorded raw outputs of each family, well-formed and malformed.

Each raw text is what a model of that family wrote (specials kept), fed in one piece and one
character at a time: the result must not depend on how the text was cut into tokens. Buffered
parsing (a non-streaming client) turns anything malformed back into the exact text; streaming
commits a call once its name is read.
"""

from __future__ import annotations

import json

import pytest

from models.events import TextDelta, ToolCallDelta, ToolCallStart
from models.request import Tool
from models.tool_formats import FORMATS, detect_tool_format
from models.tool_parser import ToolCallParser

TOOLS = (
    Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
    Tool("write_file", "", {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"},
                                                             "lines": {"type": "array"}}}),
)


def parse(family: str, raw: str, *, buffered: bool, step: int) -> tuple[str, list[tuple[str, dict]]]:
    parser = ToolCallParser(FORMATS[family], TOOLS, buffer_calls=buffered)
    events = []
    for i in range(0, len(raw), step):
        events += parser.feed(raw[i:i + step])
    events += parser.finish()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            assert e.index not in names, "a call's id and name appear once"
            names[e.index], args[e.index] = e.name, ""
        elif isinstance(e, ToolCallDelta):
            args[e.index] += e.arguments
    assert sorted(names) == list(range(len(names))), "calls are numbered 0, 1, ..."
    calls = []
    for i in sorted(names):
        try:
            calls.append((names[i], json.loads(args[i])))
        except ValueError:
            calls.append((names[i], {"<unparsed>": args[i]}))
    return text, calls


WELL_FORMED = [
    ("hermes", 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>',
     "I will check.\n", [("get_weather", {"city": "Oslo", "days": 2})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n'
               '{"name": "write_file", "arguments": {"path": "a.py", "content": "print(\\"}\\")\\n"}}\n</tool_call>',
     "", [("get_weather", {"city": "Oslo"}), ("write_file", {"path": "a.py", "content": 'print("}")\n'})]),
    # Whitespace after a call is dropped (it would be an empty text block in Anthropic's stream); text is kept.
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n\t \nDone.', "Done.", [("get_time", {})]),
    # Qwen2.5-Coder without its tags (seen when specials are dropped), and in a code fence.
    ("hermes", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
    ("hermes", '```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```', "", [("get_weather", {"city": "Rome"})]),
    ("qwen3_coder", 'Writing it.\n<tool_call>\n<function=write_file>\n<parameter=path>\nhello.py\n</parameter>\n'
                    '<parameter=content>\nprint("hello")\nprint("<b>")\n</parameter>\n<parameter=lines>\n[1, 2]\n</parameter>\n'
                    '</function>\n</tool_call>',
     "Writing it.\n", [("write_file", {"path": "hello.py", "content": 'print("hello")\nprint("<b>")', "lines": [1, 2]})]),
    ("qwen3_coder", '<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n<parameter=days>\n3\n'
                    '</parameter>\n</function>\n</tool_call>',
     "", [("get_weather", {"city": "42", "days": 3})]),  # typed by the schema: a string stays a string
    ("llama3", '{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}', "",
     [("get_weather", {"city": "Oslo"})]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
    ("llama3", '<|python_tag|>brave_search.call(query="weather in Oslo", count=3)', "",
     [("brave_search", {"query": "weather in Oslo", "count": 3})]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1B2c3D4e"}, '
                '{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "f5G6h7J8k"}]', "",
     [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})]),
    ("mistral_args", 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]write_file[ARGS]{"path": "x"}', "Sure.",
     [("get_weather", {"city": "Oslo"}), ("write_file", {"path": "x"})]),
    ("generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', "", [("get_weather", {"city": "Oslo"})]),
    ("generic", '{"response": "It is cold."}', "It is cold.", []),
]


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("step", [1, 4, 10_000])
@pytest.mark.parametrize(("family", "raw", "text", "calls"), WELL_FORMED)
def test_recorded_calls_parse_however_the_text_is_cut(family, raw, text, calls, buffered, step):
    assert parse(family, raw, buffered=buffered, step=step) == (text, calls)


MALFORMED = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"</tool_call> and more'),  # args never close
    ("hermes", '<tool_call>\n{"name": "get_weather", "args": {"city": "Oslo"}}\n</tool_call>'),  # wrong key
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os'),  # cut off by max_tokens
    ("hermes", '{"answer": 42, "note": "not a call"}'),
    # Bare JSON naming no declared tool (Qwen 0.5B under opencode): without a marker it is text.
    ("hermes", '{"name": "create hello.py", "arguments": {"content": "print(1)"}}'),
    ("hermes", "Use the <tool_call> tag to call tools, like this: <tool_call>get_weather</tool_call>."),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n"),  # never closed
    ("qwen3_coder", "<tool_call>\nget_weather(city='Oslo')\n</tool_call>"),
    ("llama3", '{"name": "get_weather", "parameters": "Oslo"}'),  # arguments not an object
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}'),  # array never closed
    ("mistral_args", "[TOOL_CALLS]get weather now"),
    ("generic", '{"tool_call": {"name": "get_weather", "arguments": "Oslo"}}'),
    ("generic", "I cannot answer in JSON."),
]


@pytest.mark.parametrize("step", [1, 10_000])
@pytest.mark.parametrize(("family", "raw"), MALFORMED)
def test_malformed_calls_come_back_as_the_exact_text_when_buffered(family, raw, step):
    assert parse(family, raw, buffered=True, step=step) == (raw, [])


@pytest.mark.parametrize(("family", "raw"), MALFORMED)
def test_malformed_calls_never_raise_when_streamed(family, raw):
    text, calls = parse(family, raw, buffered=False, step=1)
    assert text or calls
    assert len(text) <= len(raw)


def test_streamed_arguments_arrive_in_pieces_as_they_are_generated():
    parser = ToolCallParser(FORMATS["hermes"], TOOLS, buffer_calls=False)
    raw = '<tool_call>\n{"name": "write_file", "arguments": {"path": "a.py", "content": "x = 1"}}\n</tool_call>'
    pieces = [raw[i:i + 3] for i in range(0, len(raw), 3)]
    per_feed = [parser.feed(p) for p in pieces]
    starts = [i for i, evs in enumerate(per_feed) if any(isinstance(e, ToolCallStart) for e in evs)]
    deltas = [i for i, evs in enumerate(per_feed) if any(isinstance(e, ToolCallDelta) for e in evs)]
    assert len(starts) == 1 and starts[0] < len(pieces) // 2  # the name is out before the arguments are done
    assert len(deltas) > 5
    assert not any(isinstance(e, TextDelta) and e.text.strip() for evs in per_feed for e in evs)


TEMPLATES = [
    ("{% for m in messages %}<tool_call>{% endfor %}", "hermes"),
    ("<tool_call><function=x><parameter=y>", "qwen3_coder"),
    ("<|start_header_id|>ipython<|end_header_id|>{{ tools }}", "llama3"),
    ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral"),
    ("[SYSTEM_PROMPT][TOOL_CALLS]name[ARGS]", "mistral_args"),
    ("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}", "generic"),
    ("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}", None),
]


@pytest.mark.parametrize(("template", "family"), TEMPLATES)
def test_family_is_detected_from_the_template(template, family):
    found = detect_tool_format(template)
    assert (found.name if found else None) == family

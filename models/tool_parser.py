"""Tool calls out of a model's streamed text, per family, as generation events.

Learned from llama.cpp's common/chat-parser.cpp (which text each family writes, which wrappers and
misspellings small models produce) and vLLM's streaming tool parsers (commit a call once its
name is known, then stream the arguments as they are generated). Unlike both, it never re-parses
the whole reply per token: text is scanned once, with `regex` partial matching to tell "not a call"
from "not a call yet", so the cost per token stays flat however long the reply grows.

Text flows out until a call opens. A call is committed (ToolCallStart) once its name is read,
and its arguments stream as they come. With `buffer_calls` (a client that is not streaming)
each call is held until it is complete and valid; a call that turns out malformed goes out
as the text it was, never as an error.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Sequence
from typing import Any

import regex

from models.events import Event, TextDelta, ToolCallDelta, ToolCallStart
from models.request import Tool
from models.tool_formats import ToolFormat

MORE, DONE, FAIL = "more", "done", "fail"

_NAME = r'"((?:[^"\\]|\\.){1,128})"'
_ID_FIELD = r'"(?:type|id)"\s*:\s*"[^"]*"\s*,\s*'
JSON_HEADER = regex.compile(r'\s*\{\s*(?:' + _ID_FIELD + r')*"(?:name|function)"\s*:\s*' + _NAME
                            + r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')
CALL_TAIL = regex.compile(r'\s*(?:,\s*"id"\s*:\s*"[^"]*"\s*)?\}')
XML_FUNCTION = regex.compile(r"\s*<function=([^>\n]{1,128})>")
XML_PARAMETER = regex.compile(r"\s*<parameter=([^>\n]{1,128})>\n?(.*?)\n?</parameter>", regex.DOTALL)
XML_END = regex.compile(r"\s*</function>")
MISTRAL_NAME = regex.compile(r"\s*([A-Za-z0-9_.\-]{1,128})(?:\[CALL_ID\][A-Za-z0-9]{1,64})?\[ARGS\]")
ARRAY_OPEN = regex.compile(r"\s*\[")
ARRAY_NEXT = regex.compile(r"\s*(,|\])")
PYTHON_CALL = regex.compile(r"\s*([A-Za-z_][\w]*)\.call\((.*)\)\s*$", regex.DOTALL)

# Wrappers small models put around a JSON call, besides the family's own (llama.cpp's Hermes
# parser accepts the same set); each opener's closer, matched after the call.
JSON_WRAPPERS = {"<tool_call>": "</tool_call>", "<function_call>": "</function_call>", "```json": "```"}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class _Step:
    """What a call body reports: new pieces (("start", name) / ("args", text)), a status, and where it ended."""

    __slots__ = ("pieces", "status", "end")

    def __init__(self) -> None:
        self.pieces: list[tuple[str, str]] = []
        self.status = MORE
        self.end = 0


class _ArgsScanner:
    """Follows one JSON object char by char (depth, strings, escapes): arguments stream without re-parsing."""

    __slots__ = ("depth", "in_str", "esc", "done")

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = self.esc = self.done = False

    def scan(self, text: str, pos: int) -> int:
        """Advance over text[pos:]; returns where it stopped (just past the closing brace once done)."""
        for i in range(pos, len(text)):
            c = text[i]
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
            elif c == '"':
                self.in_str = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)


class JsonCall:
    """`{"name": N, "arguments": {...}}` (or `parameters`, with `id`/`type` fields anywhere Mistral and Llama put them)."""

    def __init__(self, closer: str = "", names: frozenset[str] | None = None) -> None:
        self.names = names  # where set, only these names make a call (text without a marker proves little)
        self.closer_text = closer
        self.closer = regex.compile(r"\s*" + regex.escape(closer)) if closer else None
        self.phase = "header"
        self.pos = self.sent = 0
        self.scanner = _ArgsScanner()

    def advance(self, text: str, step: _Step, final: bool) -> None:
        if self.phase == "header":
            m = JSON_HEADER.match(text, self.pos, partial=True)
            if m is None:
                step.status = FAIL
                return
            if m.partial:
                step.status = FAIL if final else MORE
                return
            name = json.loads(f'"{m.group(1)}"')
            if self.names is not None and name not in self.names:
                step.status = FAIL
                return
            step.pieces.append(("start", name))
            self.pos = m.end()
            if self.scanner.depth == 0:
                while self.pos < len(text) and text[self.pos] in " \t\r\n":
                    self.pos += 1
            self.sent = self.pos
            self.phase = "args"
        if self.phase == "args":
            if self.scanner.depth == 0 and self.pos == self.sent:
                while self.pos < len(text) and text[self.pos] in " \t\r\n":
                    self.pos += 1
                self.sent = self.pos
                if self.pos < len(text) and text[self.pos] != "{":
                    step.status = FAIL
                    return
            # A closer before the arguments close ends a broken call (rather than swallowing what
            # follows); text that may be the closer's start is held back until it is known.
            cut = text.find(self.closer_text, self.sent) if self.closer_text else -1
            end = self.scanner.scan(text[:cut] if cut >= 0 else text, self.pos)
            self.pos = end
            if self.scanner.done or cut >= 0:
                ready = end
            else:
                ready = end - _held_back(text[self.sent:end], (self.closer_text,)) if self.closer_text else end
            if ready > self.sent:
                step.pieces.append(("args", text[self.sent:ready]))
                self.sent = ready
            if not self.scanner.done and cut >= 0:
                self.pos = cut + len(self.closer_text)
            if not self.scanner.done:
                step.status = FAIL if final or cut >= 0 else MORE
                return
            self.phase = "tail"
        if self.phase == "tail":
            m = CALL_TAIL.match(text, self.pos, partial=True)
            if m is None or m.partial:
                step.status = FAIL if (m is None or final) else MORE
                return
            self.pos = m.end()
            self.phase = "closer"
        if self.phase == "closer":
            if self.closer is not None:
                m = self.closer.match(text, self.pos, partial=True)
                if m is not None and m.partial and not final:
                    step.status = MORE
                    return
                if m is not None and not m.partial:
                    self.pos = m.end()
            step.status, step.end = DONE, self.pos


class XmlCall:
    """Qwen3-Coder's `<function=NAME><parameter=K>\\nV\\n</parameter></function>`; values are typed by the schema."""

    def __init__(self, tools: Sequence[Tool], closer: str = "</tool_call>") -> None:
        self.types = {t.name: t.parameters.get("properties") or {} for t in tools}
        self.closer = regex.compile(r"\s*" + regex.escape(closer))
        self.pos = 0
        self.name: str | None = None
        self.n_params = 0
        self.closing = False

    def advance(self, text: str, step: _Step, final: bool) -> None:
        if self.name is None:
            m = XML_FUNCTION.match(text, self.pos, partial=True)
            if m is None or m.partial:
                step.status = FAIL if (m is None or final) else MORE
                return
            self.name = m.group(1).strip()
            step.pieces.append(("start", self.name))
            self.pos = m.end()
        while not self.closing:
            m = XML_PARAMETER.match(text, self.pos, partial=True)
            if m is not None and not m.partial:
                key = m.group(1).strip()
                value = self._typed(key, m.group(2))
                sep = "{" if self.n_params == 0 else ", "
                step.pieces.append(("args", sep + json.dumps(key, ensure_ascii=False) + ": "
                                    + json.dumps(value, ensure_ascii=False)))
                self.n_params += 1
                self.pos = m.end()
                continue
            end = XML_END.match(text, self.pos, partial=True)
            if end is not None and not end.partial:
                step.pieces.append(("args", "}" if self.n_params else "{}"))
                self.pos, self.closing = end.end(), True
                break
            step.status = FAIL if final or (m is None and end is None) else MORE
            return
        closer = self.closer.match(text, self.pos, partial=True)
        if closer is not None and closer.partial and not final:
            step.status = MORE
            return
        if closer is not None and not closer.partial:
            self.pos = closer.end()
        step.status, step.end = DONE, self.pos

    def _typed(self, key: str, raw: str) -> Any:
        schema = self.types.get(self.name or "", {}).get(key)
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind == "string":
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw


class MistralCall:
    """After `[TOOL_CALLS]`: a JSON array of calls (Nemo and older), or `NAME[ARGS]{...}` (v11+ tokenizers)."""

    def __init__(self) -> None:
        self.pos = 0
        self.mode: str | None = None
        self.element: JsonCall | None = None
        self.scanner = _ArgsScanner()

    def advance(self, text: str, step: _Step, final: bool) -> None:
        if self.mode is None:
            if ARRAY_OPEN.match(text, self.pos) is not None:
                self.mode, self.pos = "array", ARRAY_OPEN.match(text, self.pos).end()
            else:
                m = MISTRAL_NAME.match(text, self.pos, partial=True)
                if m is None or m.partial:
                    step.status = FAIL if (m is None or final) else MORE
                    return
                step.pieces.append(("start", m.group(1)))
                self.mode, self.pos = "args", m.end()
        if self.mode == "args":
            while self.pos < len(text) and text[self.pos] in " \n" and self.scanner.depth == 0:
                self.pos += 1
            if self.pos < len(text) and self.scanner.depth == 0 and text[self.pos] != "{":
                step.status = FAIL
                return
            end = self.scanner.scan(text, self.pos)
            if end > self.pos:
                step.pieces.append(("args", text[self.pos:end]))
            self.pos = end
            if self.scanner.done:
                step.status, step.end = DONE, self.pos
            else:
                step.status = FAIL if final else MORE
            return
        while True:  # array
            if self.element is None:
                self.element = JsonCall()
                self.element.pos = self.pos
            self.element.advance(text, step, final)
            if step.status != DONE:
                return
            self.pos = step.end
            m = ARRAY_NEXT.match(text, self.pos, partial=True)
            if m is None or m.partial:
                step.status = FAIL if (m is None or final) else MORE
                return
            self.pos = m.end()
            self.element = None
            if m.group(1) == "]":
                step.status, step.end = DONE, self.pos
                return
            step.status = MORE


class PythonTagCall:
    """Llama 3's `<|python_tag|>`: a JSON call, or a builtin tool's `name.call(key="value", ...)`."""

    def __init__(self) -> None:
        self.json = JsonCall()

    def advance(self, text: str, step: _Step, final: bool) -> None:
        self.json.advance(text, step, final)
        if step.status != FAIL or step.pieces:
            return
        m = PYTHON_CALL.match(text) if final else None
        if m is None:
            step.status = FAIL if final or not regex.match(r"\s*[A-Za-z_]", text, partial=True) else MORE
            return
        try:
            call = ast.parse(f"f({m.group(2)})", mode="eval").body
            args = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}  # type: ignore[attr-defined]
        except (SyntaxError, ValueError):
            step.status = FAIL
            return
        step.pieces += [("start", m.group(1)), ("args", json.dumps(args, ensure_ascii=False))]
        step.status, step.end = DONE, len(text)


class ToolCallParser:
    """Generated text in, events out: TextDelta until a call opens, then ToolCallStart / ToolCallDelta per call."""

    def __init__(self, fmt: ToolFormat, tools: Sequence[Tool], *, buffer_calls: bool) -> None:
        self.fmt = fmt
        self.tools = tuple(tools)
        self.buffer_calls = buffer_calls
        self.n_calls = 0
        self.openers: tuple[str, ...] = ()
        if fmt.name in ("hermes", "qwen3_coder"):
            self.openers = tuple(JSON_WRAPPERS) if fmt.name == "hermes" else ("<tool_call>",)
        elif fmt.name in ("mistral", "mistral_args"):
            self.openers = ("[TOOL_CALLS]",)
        elif fmt.name == "llama3":
            self.openers = ("<|python_tag|>",)
        self.bare_json = fmt.name in ("hermes", "llama3")  # a bare JSON call may open the reply
        self.whole = fmt.name == "generic"  # the whole reply is one JSON object
        self._text = ""  # unconsumed text outside calls
        self._at_start = True
        self._body: Any = None
        self._body_text = ""
        self._opener = ""
        self._pending: list[Event] = []  # a call's events while it is not committed (or buffered)
        self._committed = False
        self._after_call = False  # whitespace right after a call is dropped (llama.cpp's parser trims it)

    # ---- public -----------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self.whole:
            self._text += text
            return out
        if self._body is not None:
            self._body_text += text
            self._advance(out, final=False)
        else:
            self._text += text
        self._scan_text(out, final=False)
        return out

    def finish(self) -> list[Event]:
        """End of generation: incomplete calls close (streamed) or go back to text (buffered)."""
        out: list[Event] = []
        if self.whole:
            return self._parse_whole()
        if self._body is not None:
            self._advance(out, final=True)
        self._scan_text(out, final=True)
        return out

    # ---- text outside calls -------------------------------------------------------------------

    def _scan_text(self, out: list[Event], final: bool) -> None:
        while self._body is None and self._text:
            if self._after_call:
                self._text = self._text.lstrip()
                if not self._text:
                    return
                self._after_call = False
            text = self._text
            if self._at_start and self.bare_json:
                stripped = text.lstrip(" \t\r\n;")
                if not stripped and not final:
                    return
                if stripped.startswith("{"):
                    self._open("", text, out, final)
                    continue
                self._at_start = False
            best, opener = -1, ""
            for o in self.openers:
                i = text.find(o)
                if i >= 0 and (best < 0 or i < best):
                    best, opener = i, o
            if best >= 0:
                if best:
                    out.append(TextDelta(text[:best]))
                self._open(opener, text[best + len(opener):], out, final)
                continue
            keep = 0 if final else _held_back(text, self.openers)
            if len(text) > keep:
                out.append(TextDelta(text[: len(text) - keep]))
            self._text = text[len(text) - keep:]
            return

    def _open(self, opener: str, rest: str, out: list[Event], final: bool) -> None:
        self._opener, self._body_text, self._text = opener, rest, ""
        self._committed, self._pending = False, []
        if self.fmt.name == "qwen3_coder":
            self._body = XmlCall(self.tools)
        elif opener == "[TOOL_CALLS]":
            self._body = MistralCall()
        elif opener == "<|python_tag|>":
            self._body = PythonTagCall()
        elif opener in ("", "```json"):  # no call marker: only a declared tool's name makes it a call
            self._body = JsonCall(JSON_WRAPPERS.get(opener, ""), frozenset(t.name for t in self.tools))
        else:
            self._body = JsonCall(JSON_WRAPPERS.get(opener, ""))
        self._advance(out, final)

    # ---- inside a call ----------------------------------------------------------------------------

    def _advance(self, out: list[Event], final: bool) -> None:
        step = _Step()
        self._body.advance(self._body_text, step, final)
        for kind, value in step.pieces:
            if kind == "start":
                self._pending.append(ToolCallStart(self.n_calls + self._starts_pending(), new_call_id(), value))
            else:
                index = self.n_calls + self._starts_pending() - 1
                self._pending.append(ToolCallDelta(index, value))
        if not self.buffer_calls and self._pending:
            out.extend(self._pending)
            self.n_calls += sum(isinstance(e, ToolCallStart) for e in self._pending)
            self._pending = []
            self._committed = True
        if step.status == MORE:
            return
        rest = self._body_text[step.end:] if step.status == DONE else ""
        if step.status == DONE and self.buffer_calls and not _valid_calls(self._pending):
            step.status = FAIL
        if step.status == DONE:
            out.extend(self._pending)
            self.n_calls += sum(isinstance(e, ToolCallStart) for e in self._pending)
        elif self._committed:
            rest = self._body_text[getattr(self._body, "pos", len(self._body_text)):]
        else:
            out.append(TextDelta(self._opener + self._body_text))
            rest = ""
        self._after_call = step.status == DONE or self._committed
        self._body, self._pending, self._committed = None, [], False
        self._body_text = ""
        self._at_start = self._at_start and step.status == DONE
        self._text = rest + self._text

    def _starts_pending(self) -> int:
        return sum(isinstance(e, ToolCallStart) for e in self._pending)

    # ---- generic: one JSON object ------------------------------------------------------------------

    def _parse_whole(self) -> list[Event]:
        text, self._text = self._text, ""
        try:
            obj = json.loads(text)
        except ValueError:
            return [TextDelta(text)] if text else []
        if isinstance(obj, dict):
            calls = obj.get("tool_calls") if isinstance(obj.get("tool_calls"), list) else (
                [obj["tool_call"]] if isinstance(obj.get("tool_call"), dict) else None)
            if calls and all(isinstance(c, dict) and isinstance(c.get("name"), str)
                             and isinstance(c.get("arguments", {}), dict) for c in calls):
                out: list[Event] = []
                for c in calls:
                    out += [ToolCallStart(self.n_calls, new_call_id(), c["name"]),
                            ToolCallDelta(self.n_calls, json.dumps(c.get("arguments", {}), ensure_ascii=False))]
                    self.n_calls += 1
                return out
            if "response" in obj:
                response = obj["response"]
                return [TextDelta(response if isinstance(response, str) else json.dumps(response, ensure_ascii=False))]
        return [TextDelta(text)]


def _held_back(text: str, openers: Sequence[str]) -> int:
    """How much of text's end may be the start of an opener (held until the next piece decides)."""
    keep = 0
    for o in openers:
        for k in range(min(len(o) - 1, len(text)), keep, -1):
            if text.endswith(o[:k]):
                keep = k
                break
    return keep


def _valid_calls(events: Sequence[Event]) -> bool:
    """Every call's arguments concatenate to a JSON object."""
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            args[e.index] = ""
        elif isinstance(e, ToolCallDelta):
            args[e.index] = args.get(e.index, "") + e.arguments
    if not args:
        return False
    for text in args.values():
        try:
            if not isinstance(json.loads(text), dict):
                return False
        except ValueError:
            return False
    return True

"""OpenAI Responses dialect (`POST /v1/responses`), the wire Codex speaks.

Input items become the internal messages (instructions and developer items as system, calls
merged into the assistant turn before them, reasoning dropped: no local model thinks); tools are
flattened into functions the model can call: namespace members as `namespace.name`, custom
(freeform) tools as a function of one string `input`, answered back under their own names. Hosted
tools no local model can run (web_search, image_generation, ...) are skipped with a log line.
Nothing is stored: `store: true` is accepted and answered `store: false`, and
`previous_response_id` is refused. Unknown top-level fields are refused, as in the chat dialect.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.errors import ContextLengthExceeded, InvalidRequest, RouterError, UnsupportedParameter
from models.events import Finish, ToolCallDelta, ToolCallStart, Usage
from models.request import ImagePart, Message, OutputFormat, Part, Request, TextPart, Tool, ToolCall, ToolResult
from models.tool_checks import check_tool_request
from router.dialects.body import openapi_body, parse
from router.dialects.dispatch import answer, route_request
from router.dialects.sampling import MAX_TOKENS_LIMIT, sampling_params
from router.dialects.tools import FunctionDefinition, ToolSpec, internal_tool_choice, internal_tools
from router.errors import OPENAI, from_validation_errors
from router.streaming import SSE, Outcome, json_str, sse_event

log = logging.getLogger("router.dialects.responses")

ENDPOINT = "/v1/responses"
DROPPED_ITEMS = frozenset({"reasoning", "web_search_call"})  # nothing in them a local model can read
NO_OUTPUT_INCLUDES = frozenset({"message.output_text.logprobs"})  # `include` values that would change the output


# ------------------------------------------------------------------------------------------ request


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")  # id, status, phase: Codex replays them
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    arguments: str = Field("", description="The arguments as a JSON text (an object).")
    namespace: str | None = None


class CustomToolCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["custom_tool_call"]
    call_id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    input: str
    namespace: str | None = None


class CallOutputItem(BaseModel):
    """function_call_output and custom_tool_call_output: what a tool answered to `call_id`."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str = Field(..., min_length=1)
    output: str | list[ContentPart]


class DeclaredTool(BaseModel):
    """A function, a custom (freeform) tool, or a hosted type (skipped): what a namespace may hold too."""

    model_config = ConfigDict(extra="allow")  # hosted tools carry their own settings; functions `defer_loading`
    type: str
    name: str | None = Field(None, min_length=1, max_length=128)
    description: str | None = None
    parameters: Any = Field(None, description="A JSON Schema object (functions).")
    strict: bool | None = None
    format: dict[str, Any] | None = Field(None, description="Custom tools: text, or a grammar the input follows.")


class ResponsesTool(DeclaredTool):
    """A top-level tool: also a namespace of tools (Codex's MCP servers and agent tools)."""

    tools: list[DeclaredTool] | None = Field(None, description="Namespaces: their functions and custom tools.")


class AdditionalToolsItem(BaseModel):
    """Codex's way to declare tools inside `input` (its bundled-model requests carry no top-level `tools`)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["additional_tools"]
    tools: list[ResponsesTool]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema.")
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="Accepted: a hint for OpenAI's reasoning models that Codex sends; no local model takes it.")


@dataclass(frozen=True)
class ToolOrigin:
    """How a tool the model sees as one flat function is named on the wire."""

    name: str
    namespace: str | None = None
    custom: bool = False


@dataclass
class ToolTable:
    """The flattened tools, how to name each call back, and each tool's wire path (for error params)."""

    tools: tuple[Tool, ...] = ()
    origins: dict[str, ToolOrigin] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


def flat_name(name: str, namespace: str | None) -> str:
    return f"{namespace}.{name}" if namespace else name


def custom_definition(spec: DeclaredTool, name: str) -> FunctionDefinition:
    """A custom tool as a function of one string, its grammar spelled out (the model writes it inside JSON)."""
    description = spec.description or ""
    fmt = spec.format or {}
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        description += (f"\n\nThe `input` string is raw text (not JSON) in this {fmt.get('syntax', '')} grammar:\n"
                        + fmt["definition"])
    parameters = {"type": "object", "properties": {"input": {"type": "string", "description": "The tool's raw input."}},
                  "required": ["input"], "additionalProperties": False}
    return FunctionDefinition(name=name, description=description, parameters=parameters)


def tool_table(declared: list[tuple[str, ResponsesTool]]) -> ToolTable:
    """`declared` ((wire path, tool) pairs) as the flat functions the model is offered."""
    table = ToolTable()
    specs: list[ToolSpec] = []

    def offer(where: str, spec: DeclaredTool, namespace: str | None) -> None:
        if spec.type not in ("function", "custom"):
            log.info("skipping %s (type %s): no local model can run it", where, spec.type)
            return
        if not spec.name:
            raise InvalidRequest(f"`{where}.name` is required.", param=f"{where}.name")
        name = flat_name(spec.name, namespace)
        if len(name) > 128:
            raise InvalidRequest(f"`{where}.name` with its namespace, `{name}`, is over 128 characters.",
                                 param=f"{where}.name")
        if spec.type == "custom":
            specs.append(ToolSpec(function=custom_definition(spec, name)))
        else:
            specs.append(ToolSpec(function=FunctionDefinition(
                name=name, description=spec.description, parameters=spec.parameters, strict=spec.strict)))
        if namespace or spec.type == "custom":
            table.origins[name] = ToolOrigin(spec.name, namespace, custom=spec.type == "custom")
        table.paths.append(where)

    for where, spec in declared:
        if spec.type != "namespace":
            offer(where, spec, None)
            continue
        if not spec.name:
            raise InvalidRequest(f"`{where}.name` is required.", param=f"{where}.name")
        for j, member in enumerate(spec.tools or ()):
            offer(f"{where}.tools[{j}]", member, spec.name)
    with blamed_on_wire(table.paths):
        table.tools = internal_tools(specs)
    return table


# The shared checks name tools as chat does (`tools[i].function.x`, i counting only what the model is offered).
CHAT_TOOL_PARAM = re.compile(r"tools\[(\d+)\]\.function\.")


@contextmanager
def blamed_on_wire(paths: list[str]) -> Iterator[None]:
    """Rewrite a shared check's tool param (and message) into the Responses path of that tool."""
    try:
        yield
    except InvalidRequest as err:
        def wire(text: str) -> str:
            return CHAT_TOOL_PARAM.sub(lambda m: paths[int(m.group(1))] + ".", text)

        err.message = wire(err.message)
        err.args = (err.message,)
        err.param = wire(err.param) if err.param else err.param
        raise


def validate_item(model: type[BaseModel], raw: dict[str, Any], i: int) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_errors([{**e, "loc": ("body", "input", i, *e["loc"])} for e in exc.errors()]) from None


def message_parts(content: str | list[ContentPart], param: str) -> list[Part]:
    """A message's content as typed parts: text (input, output, refusal) and images by URL."""
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for j, part in enumerate(content):
        if part.type in ("input_text", "output_text") and part.text is not None:
            parts.append(TextPart(part.text))
        elif part.type == "refusal" and part.refusal is not None:
            parts.append(TextPart(part.refusal))
        elif part.type == "input_image" and part.image_url is not None:
            parts.append(ImagePart(part.image_url))
        elif part.type == "input_image":
            raise UnsupportedParameter("Only images given by `image_url` are supported: no files are kept here.",
                                       param=f"{param}[{j}]")
        else:
            raise UnsupportedParameter(f"Content parts of type `{part.type}` are not supported (input_text, "
                                       "output_text, refusal and input_image are).", param=f"{param}[{j}].type")
    return parts


def output_text(output: str | list[ContentPart], param: str) -> str:
    """A tool's output as the text a chat template renders (text parts only: tool results carry no images)."""
    if isinstance(output, str):
        return output
    for j, part in enumerate(output):
        if part.type not in ("input_text", "output_text") or part.text is None:
            raise UnsupportedParameter(f"Tool outputs can hold text parts only (got `{part.type}`).",
                                       param=f"{param}[{j}]")
    return "".join(part.text or "" for part in output)


def call_arguments(arguments: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"`{param}` is not JSON: {exc.msg}.", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{param}` must be a JSON object.", param=param)
    return value


class ResponsesRequest(BaseModel):
    """The body of POST /v1/responses; a field that would change the output is honoured or refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="`auto`, a label (code_edit, fim, chat, instruct) or a model id.")
    instructions: str | None = Field(None, description="A system message before the input.")
    input: str | list[dict[str, Any]] = Field(..., description="A user message, or items: messages, calls, outputs.")
    tools: list[ResponsesTool] | None = None
    tool_choice: str | dict[str, Any] | None = Field(None, description="none, auto, required or a named tool.")
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description="Accepted (no obfuscation field is sent).")
    store: bool | None = Field(None, description="Accepted; nothing is stored (the response says store: false).")
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = Field(None, description="Accepted: no local model reasons before answering.")
    truncation: Literal["auto", "disabled"] | None = Field(None, description="Only disabled is supported.")
    # Hints and labels that change nothing in the output:
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    client_metadata: dict[str, str] | None = Field(None, description="Codex's session labels.")
    user: str | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = Field(None, ge=0, description="Accepted: it counts hosted tool calls; none run here.")
    # Server-side state and features we do not have:
    previous_response_id: str | None = Field(None, description="Not supported: no response is kept.")
    conversation: str | dict[str, Any] | None = Field(None, description="Not supported: no conversation is kept.")
    background: bool | None = Field(None, description="Only false is supported.")
    prompt: dict[str, Any] | None = Field(None, description="Not supported (stored prompt templates).")
    context_management: list[dict[str, Any]] | None = Field(None, description="Not supported (server-side compaction).")
    top_logprobs: int | None = Field(None, description="Only 0 is supported.")

    @model_validator(mode="after")
    def _refuse_unhonoured(self) -> ResponsesRequest:
        refused = {
            "previous_response_id": (self.previous_response_id is not None,
                                     "`previous_response_id` is not supported: no response is kept; send the whole "
                                     "conversation in `input` (with store: false)."),
            "conversation": (self.conversation is not None, "`conversation` is not supported: no conversation is kept."),
            "background": (bool(self.background), "`background` is not supported: responses run in the foreground."),
            "prompt": (self.prompt is not None, "`prompt` (a stored prompt template) is not supported."),
            "context_management": (bool(self.context_management), "`context_management` is not supported."),
            "top_logprobs": (bool(self.top_logprobs), "`top_logprobs` is not supported."),
            "truncation": (self.truncation == "auto", "`truncation: auto` is not supported: a prompt that does not fit "
                                                      "the context is refused, never cut."),
        }
        for param, (bad, message) in refused.items():
            if bad:
                raise UnsupportedParameter(message, param=param)
        for value in self.include or ():
            if value in NO_OUTPUT_INCLUDES:
                raise UnsupportedParameter(f"`include` {value!r} is not supported.", param="include")
        return self

    @cached_property
    def tool_table(self) -> ToolTable:
        declared = [(f"tools[{i}]", t) for i, t in enumerate(self.tools or ())]
        for i, raw in enumerate(self.items):
            if raw.get("type") == "additional_tools":
                item = validate_item(AdditionalToolsItem, raw, i)
                declared += [(f"input[{i}].tools[{j}]", t) for j, t in enumerate(item.tools)]
        return tool_table(declared)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [] if isinstance(self.input, str) else self.input

    def messages(self) -> tuple[Message, ...]:
        """The input items as chat messages, calls merged into the assistant turn before them."""
        turns: list[tuple[str, list[Part]]] = []
        if self.instructions:
            turns.append(("system", [TextPart(self.instructions)]))
        if isinstance(self.input, str):
            if not self.input:
                raise InvalidRequest("`input` is empty.", param="input")
            turns.append(("user", [TextPart(self.input)]))
        call_names: dict[str, str] = {}
        for i, raw in enumerate(self.items):
            kind = raw.get("type", "message" if "role" in raw else None)
            if kind is not None and not isinstance(kind, str):
                raise InvalidRequest(f"`input[{i}].type` must be a string.", param=f"input[{i}].type")
            if kind == "message":
                message = validate_item(MessageItem, raw, i)
                role = "system" if message.role == "developer" else message.role
                turns.append((role, message_parts(message.content, f"input[{i}].content")))
            elif kind in ("function_call", "custom_tool_call"):
                if kind == "function_call":
                    call = validate_item(FunctionCallItem, raw, i)
                    arguments = call_arguments(call.arguments, f"input[{i}].arguments")
                else:
                    call = validate_item(CustomToolCallItem, raw, i)
                    arguments = {"input": call.input}
                name = flat_name(call.name, call.namespace)
                call_names[call.call_id] = name
                if not turns or turns[-1][0] != "assistant":
                    turns.append(("assistant", []))
                turns[-1][1].append(ToolCall(call.call_id, name, arguments))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                result = validate_item(CallOutputItem, raw, i)
                if result.call_id not in call_names:
                    raise InvalidRequest(f"`input[{i}]` is the output of call `{result.call_id}`, but no earlier item "
                                         "made a call with that `call_id`.", param=f"input[{i}].call_id")
                content = output_text(result.output, f"input[{i}].output")
                turns.append(("tool", [ToolResult(result.call_id, content, name=call_names[result.call_id])]))
            elif kind in DROPPED_ITEMS or kind == "additional_tools":
                continue
            elif kind is None:
                raise InvalidRequest(f"`input[{i}]` has neither a `type` nor a `role`.", param=f"input[{i}].type")
            else:
                raise UnsupportedParameter(
                    f"`input[{i}]` is a `{kind}` item, which is not supported (message, function_call, "
                    "function_call_output, custom_tool_call, custom_tool_call_output and reasoning are).",
                    param=f"input[{i}].type")
        messages = tuple(Message(role, tuple(parts)) for role, parts in turns)  # type: ignore[arg-type]
        if not any(m.role == "user" for m in messages):
            raise InvalidRequest("`input` must contain at least one user message.", param="input")
        return messages

    def output_format(self) -> OutputFormat:
        fmt = (self.text.format if self.text else None) or {}
        kind = fmt.get("type", "text")
        if kind == "text":
            return OutputFormat()
        if kind == "json_object":
            return OutputFormat("json")
        if kind == "json_schema":
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequest("`text.format.schema` must be a JSON Schema object.", param="text.format.schema")
            return OutputFormat("json_schema", schema)
        raise UnsupportedParameter(f"`text.format` type {kind!r} is not one of text, json_object, json_schema.",
                                   param="text.format.type")

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        """tool_choice in the chat shape the shared mapping reads (Responses names the tool at the top level)."""
        choice = self.tool_choice
        if not isinstance(choice, dict):
            return choice
        if choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
            name = flat_name(choice["name"], choice.get("namespace") if isinstance(choice.get("namespace"), str) else None)
            return {"type": "function", "function": {"name": name}}
        raise UnsupportedParameter("`tool_choice` must be none, auto, required, or {\"type\": \"function\", "
                                   "\"name\": ...} naming a declared function or custom tool.", param="tool_choice")

    def to_request(self) -> Request:
        table = self.tool_table
        params = sampling_params(max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p)
        request = Request(
            "chat", ENDPOINT, self.model, params, self.messages(), tools=table.tools,
            tool_choice=internal_tool_choice(self.chat_tool_choice(), self.parallel_tool_calls, table.tools),
            output=self.output_format(), stream=self.stream,
        )
        with blamed_on_wire(table.paths):
            check_tool_request(request, output_param="text.format.schema")
        return request


# ----------------------------------------------------------------------------------------- response


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def response_usage(u: Usage) -> dict[str, Any]:
    """Usage as Responses counts it; the prompt tokens evaluated anew are what the KV cache took in."""
    details = {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.prompt_tokens - u.cached_tokens}
    return {
        "input_tokens": u.prompt_tokens, "input_tokens_details": details,
        "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, status: str, text: str | None) -> dict[str, Any]:
    """An assistant message item; `text` None while it is still open (no part yet)."""
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [text_part(text)]}


def custom_input(arguments: str) -> str:
    """The raw input of a custom tool call, which the model wrote as {"input": "..."} (perhaps cut
    inside the string by the token limit); the text as written where it cannot be unwrapped."""
    for ending in ("", '"}'):
        try:
            value = json.loads(arguments + ending, strict=False)  # models write raw newlines in strings
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("input"), str):
            return value["input"]
    return arguments


class InputStreamer:
    """The text of a custom call's `input` as the model's {"input": "..."} for it arrives, piece by piece.

    Why: a patch can take minutes to generate on a CPU, and Codex gives up after 300 s without an event.
    Each piece is decoded once, up to the last whole escape (a surrogate pair waits for its second half).
    """

    OPENING = re.compile(r'\s*\{\s*"input"\s*:\s*"')

    def __init__(self) -> None:
        self.raw = ""
        self.text = ""  # what was streamed so far
        self._at: int | None = None  # where the undecoded rest of the string starts in `raw`
        self._ended = False

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self._at is None:
            opening = self.OPENING.match(self.raw)
            if opening is None:
                return ""
            self._at = opening.end()
        if self._ended:
            return ""
        raw, start, i = self.raw, self._at, self._at
        while i < len(raw) and raw[i] != '"':
            if raw[i] != "\\":
                i += 1
                continue
            size = 6 if raw[i + 1:i + 2] == "u" else 2
            if size == 6 and "d800" <= raw[i + 2:i + 6].lower() <= "dbff":
                size = 12  # a high surrogate: decoded with the low one after it
            if i + size > len(raw):
                break
            i += size
        self._ended = i < len(raw) and raw[i] == '"'
        self._at = i
        new = json.loads('"' + raw[start:i] + '"', strict=False) if i > start else ""
        self.text += new
        return new


def status_of(finish: Finish) -> tuple[str, dict[str, str] | None]:
    """The response status (and incomplete_details) a generation's end gives."""
    if finish.reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return ("cancelled" if finish.reason == "cancelled" else "completed"), None


@dataclass
class OpenItem:
    """The output item being streamed: its final-form dict, its position and the text or arguments so far."""

    item: dict[str, Any]
    index: int
    kind: str  # the delta event's type
    pieces: list[str] = field(default_factory=list)
    streamer: InputStreamer | None = None  # custom calls: their input, unwrapped as it comes

    def __post_init__(self) -> None:
        # The delta event's JSON around the text, fixed for the item: the per-token work is one json_str.
        part = ',"content_index":0' if self.item["type"] == "message" else ""
        self.delta_head = f'event: {self.kind}\ndata: {{"type":"{self.kind}","sequence_number":'
        self.delta_mid = f',"item_id":"{self.item["id"]}","output_index":{self.index}{part},"delta":'
        self.delta_tail = ',"logprobs":[]}\n\n' if self.item["type"] == "message" else "}\n\n"


class ResponsesFormat:
    """One Response as numbered SSE events, or as one object.

    Stateful, unlike the chat formats: each event takes the next sequence_number, the item being
    streamed is closed (its .done events) before the next one opens, and the items are kept for
    `response.completed`, which carries the whole response (Codex reads the id and usage there and
    acts on the items of `output_item.done`).
    """

    media_type = SSE
    keeps_alive = True

    def __init__(self, model: str, req: ResponsesRequest) -> None:
        self.id = new_id("resp")
        self.origins = req.tool_table.origins
        self._base: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "model": model, "output": [],
            "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
            "prompt_cache_key": req.prompt_cache_key, "reasoning": req.reasoning, "safety_identifier": req.safety_identifier,
            "service_tier": req.service_tier, "store": False, "temperature": req.temperature,
            "text": {"format": (req.text.format if req.text else None) or {"type": "text"}},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": [t.model_dump(exclude_unset=True) for t in req.tools or ()], "top_p": req.top_p,
            "truncation": "disabled", "usage": None, "user": req.user, "metadata": req.metadata or {},
        }
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # the output so far, the open item last
        self._open: OpenItem | None = None
        self._space = ""  # whitespace before any open message: dropped if a call comes next

    # ---- events

    def _event(self, kind: str, fields: dict[str, Any]) -> str:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(kind, data)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return {**self._base, "status": status, "output": list(self._items), **fields}

    def head(self) -> bytes:
        return (self._event("response.created", {"response": self._response("in_progress")})
                + self._event("response.in_progress", {"response": self._response("in_progress")})).encode()

    def keepalive(self) -> bytes:
        """A `response.in_progress` event: Codex takes only events, not SSE comments, as signs of life."""
        return self._event("response.in_progress", {"response": self._response("in_progress")}).encode()

    def text(self, text: str) -> bytes:
        out = ""
        if self._open is None or self._open.item["type"] != "message":
            if not text.strip():
                self._space += text
                return b""
            text, self._space = self._space + text, ""
            out = self._close("completed") + self._open_message()
        self._open.pieces.append(text)  # type: ignore[union-attr]
        return (out + self._delta(text)).encode()

    def _delta(self, text: str) -> str:
        item = self._open
        assert item is not None
        seq = self._seq
        self._seq += 1
        return item.delta_head + str(seq) + item.delta_mid + json_str(text) + item.delta_tail

    def _open_message(self) -> str:
        index = len(self._items)
        item = message_item(new_id("msg"), "in_progress", None)
        self._open = OpenItem(item, index, "response.output_text.delta")
        self._items.append(item)
        return (self._event("response.output_item.added", {"output_index": index, "item": item})
                + self._event("response.content_part.added", {"item_id": item["id"], "output_index": index,
                                                              "content_index": 0, "part": text_part("")}))

    def tool_call_start(self, event: ToolCallStart) -> bytes:
        self._space = ""
        out = self._close("completed")
        index = len(self._items)
        item = self._call_item(event.id, event.name, "", "in_progress")
        if item["type"] == "custom_tool_call":
            self._open = OpenItem(item, index, "response.custom_tool_call_input.delta", streamer=InputStreamer())
        else:
            self._open = OpenItem(item, index, "response.function_call_arguments.delta")
        self._items.append(item)
        return (out + self._event("response.output_item.added", {"output_index": index, "item": item})).encode()

    def tool_call_delta(self, event: ToolCallDelta) -> bytes:
        """Arguments of the open call (calls stream one after another, each after its start)."""
        item = self._open
        assert item is not None and item.item["type"] != "message"
        item.pieces.append(event.arguments)
        text = item.streamer.feed(event.arguments) if item.streamer is not None else event.arguments
        return self._delta(text).encode() if text else b""

    def _close(self, status: str) -> str:
        """The .done events of the open item, which takes its final form in the output."""
        open_item, self._open = self._open, None
        if open_item is None:
            return ""
        item, index, whole = open_item.item, open_item.index, "".join(open_item.pieces)
        item["status"] = status
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            item["content"] = [text_part(whole)]
            out = (self._event("response.output_text.done", {**where, "content_index": 0, "text": whole, "logprobs": []})
                   + self._event("response.content_part.done", {**where, "content_index": 0, "part": text_part(whole)}))
        elif item["type"] == "custom_tool_call":
            item["input"] = custom_input(whole)
            streamed = open_item.streamer.text if open_item.streamer is not None else ""
            rest = item["input"][len(streamed):] if item["input"].startswith(streamed) else ""
            out = self._event("response.custom_tool_call_input.delta", {**where, "delta": rest}) if rest else ""
            out += self._event("response.custom_tool_call_input.done", {**where, "input": item["input"]})
        else:
            item["arguments"] = whole
            out = self._event("response.function_call_arguments.done",
                              {**where, "name": item["name"], "arguments": whole})
        self._items[index] = item
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def tail(self, finish: Finish) -> bytes:
        status, incomplete = status_of(finish)
        out = ""
        if self._space and not self._items:  # the whole answer was whitespace: still an answer
            out = self._open_message()
            self._open.pieces.append(self._space)  # type: ignore[union-attr]
            out += self._delta(self._space)
        out += self._close("incomplete" if incomplete else "completed")
        response = self._response(status, usage=response_usage(finish.usage), incomplete_details=incomplete)
        return (out + self._event("response.completed", {"response": response})).encode()

    def error(self, err: RouterError) -> bytes:
        """`response.failed`: Codex reads its error code (context_length_exceeded is final, the rest retried)."""
        code = "context_length_exceeded" if isinstance(err, ContextLengthExceeded) else "server_error"
        failed = self._response("failed", error={"code": code, "message": err.message})
        return self._event("response.failed", {"response": failed}).encode()

    # ---- items

    def _call_item(self, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
        """The output item of a call, under the name (and namespace, or custom kind) the client declared."""
        origin = self.origins.get(name, ToolOrigin(name))
        if origin.custom:
            item = {"id": new_id("ctc"), "type": "custom_tool_call", "status": status, "call_id": call_id,
                    "name": origin.name, "input": custom_input(arguments)}
        else:
            item = {"id": new_id("fc"), "type": "function_call", "status": status, "call_id": call_id,
                    "name": origin.name, "arguments": arguments}
        if origin.namespace:
            item["namespace"] = origin.namespace
        return item

    def body(self, outcome: Outcome) -> Any:
        status, incomplete = status_of(outcome.finish)
        items = []
        if outcome.text and (outcome.text.strip() or not outcome.tool_calls):
            items.append(message_item(new_id("msg"), "completed", outcome.text))
        items += [self._call_item(c.id, c.name, c.arguments, "completed") for c in outcome.tool_calls]
        if incomplete and items:
            items[-1]["status"] = "incomplete"
        self._items = items
        return self._response(status, usage=response_usage(outcome.finish.usage), incomplete_details=incomplete)


def build() -> APIRouter:
    api = APIRouter(tags=["openai"])

    @api.post(ENDPOINT, openapi_extra=openapi_body(ResponsesRequest))
    async def responses(request: HTTPRequest):
        req, internal = await parse(request, ResponsesRequest)
        route = route_request(request, internal)
        fmt = ResponsesFormat(route.model_id, req)
        return await answer(request, dialect=OPENAI, route=route, internal=internal, fmt=fmt, stream=req.stream)

    return api

"""Anthropic Messages dialect: POST /v1/messages (streaming and not) and /v1/messages/count_tokens.

Claude Code speaks only this. It sends many beta-only fields and `anthropic-beta` headers, so
unknown fields are ignored (a strict schema is a known source of 400s with gateways); the fields
that change the output are honoured. Claude Code also puts a per-request billing line at the top
of the system prompt (`x-anthropic-billing-header: ...; cch=<changes every request>;`): it is
dropped here, or every turn would miss the prompt cache from token ~40 on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Literal

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field

from models.errors import InvalidRequest, RouterError, UnsupportedParameter
from models.events import Finish, ToolCallDelta, ToolCallStart, Usage
from models.request import ImagePart, Message, OutputFormat, Part, Request, TextPart, ToolCall, ToolChoice, ToolResult
from models.tool_checks import check_tool_request
from router.dialects.body import openapi_body, parse
from router.dialects.dispatch import answer, route_request
from router.dialects.sampling import MAX_TOKENS_LIMIT, sampling_params, stop_tuple
from router.dialects.tools import FunctionDefinition, ToolSpec, internal_tools
from router.errors import ANTHROPIC, error_body
from router.state import state
from router.streaming import SSE, Outcome, sse_event

log = logging.getLogger("router.anthropic")

BILLING_HEADER = "x-anthropic-billing-header:"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn",
                "error": "end_turn"}
# Blocks that only carry a hosted model's reasoning: dropped from the history (no local model reads them).
DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class Block(BaseModel):
    """One content block; the fields of every type we read (the rest are ignored)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    source: dict[str, Any] | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None  # a tool_result's (not recursive: OpenAPI inlines schemas)
    is_error: bool | None = None


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class AnthropicTool(BaseModel):
    """A client tool (`input_schema`), or one of Anthropic's server tools (a dated `type`, no schema)."""

    model_config = ConfigDict(extra="allow")
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(..., description="`auto`, a label, a model id, or a name `model_aliases` maps (claude-*).")
    max_tokens: int = Field(..., ge=1, le=MAX_TOKENS_LIMIT)
    messages: list[AnthropicMessage] = Field(..., min_length=1)
    system: str | list[Block] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    thinking: dict[str, Any] | None = Field(None, description="Accepted; no local model thinks, so it changes nothing.")
    output_config: dict[str, Any] | None = Field(
        None, description="`format` ({type: json_schema, schema}) constrains the reply; `effort` changes nothing here.")
    output_format: dict[str, Any] | None = Field(None, description="The structured-outputs beta's form of output_config.format.")

    def to_request(self) -> Request:
        messages = system_messages(self.system)
        for i, msg in enumerate(self.messages):
            messages += internal_messages(msg, i)
        if not any(m.role == "user" for m in messages):
            raise InvalidRequest("`messages` must contain at least one user message.", param="messages")
        tools = internal_tools(self._tool_specs())
        params = sampling_params(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                 top_k=self.top_k, stop=stop_tuple(self.stop_sequences, "stop_sequences"))
        output, where = self._output()
        request = Request("chat", "/v1/messages", self.model, params, tuple(messages), tools=tools,
                          tool_choice=tool_choice(self.tool_choice, tools), output=output, stream=self.stream)
        check_tool_request(request, output_param=where, tool_param="tools[{i}]")
        return request

    def _output(self) -> tuple[OutputFormat, str]:
        """The structured-output format (`output_config.format`, or the beta's `output_format`) and where it was."""
        fmt, where = (self.output_config or {}).get("format"), "output_config.format"
        if fmt is None:
            fmt, where = self.output_format, "output_format"
        if fmt is None:
            return OutputFormat(), where
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest(f"`{where}` must be {{\"type\": \"json_schema\", \"schema\": {{...}}}}.", param=where)
        return OutputFormat("json_schema", fmt["schema"]), f"{where}.schema"

    def _tool_specs(self) -> list[ToolSpec]:
        specs = []
        for tool in self.tools or ():
            if tool.input_schema is None or tool.type not in (None, "custom"):
                log.info("skipping Anthropic server tool %r (%s): no local model can run it", tool.name, tool.type)
                continue
            specs.append(ToolSpec(function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema)))
        return specs


class CountTokensRequest(MessagesRequest):
    """count_tokens takes the same body without `max_tokens`."""

    max_tokens: int = Field(1, ge=1, le=MAX_TOKENS_LIMIT)


def system_messages(system: str | list[Block] | None) -> list[Message]:
    """`system` (a string or text blocks) as one system message, the billing line dropped."""
    if system is None:
        return []
    texts = [system] if isinstance(system, str) else [b.text or "" for b in system if b.type == "text"]
    text = "\n\n".join(t for t in (strip_billing(t) for t in texts) if t)
    return [Message("system", (TextPart(text),))] if text else []


def strip_billing(text: str) -> str:
    """The text without Claude Code's per-request `x-anthropic-billing-header:` line."""
    if not text.startswith(BILLING_HEADER):
        return text
    _, _, rest = text.partition("\n")
    return rest.lstrip("\n")


def internal_messages(msg: AnthropicMessage, i: int) -> list[Message]:
    """One Anthropic message as internal messages: a user turn's tool results first (as `tool`
    messages), then its text; an assistant turn's text and tool_use blocks as one message."""
    where = f"messages[{i}].content"
    if isinstance(msg.content, str):
        return [Message(msg.role, (TextPart(msg.content),))]
    results: list[Message] = []
    parts: list[Part] = []
    for j, block in enumerate(msg.content):
        at = f"{where}[{j}]"
        if block.type == "text":
            parts.append(TextPart(block.text or ""))
        elif block.type == "image":
            parts.append(ImagePart(image_url(block, at)))
        elif block.type == "tool_use" and msg.role == "assistant":
            if not isinstance(block.input, dict) or not block.id or not block.name:
                raise InvalidRequest(f"`{at}` (tool_use) needs `id`, `name` and an object `input`.", param=at)
            parts.append(ToolCall(block.id, block.name, block.input))
        elif block.type == "tool_result" and msg.role == "user":
            if not block.tool_use_id:
                raise InvalidRequest(f"`{at}.tool_use_id` is required: it names the call this result answers.",
                                     param=f"{at}.tool_use_id")
            results.append(Message("tool", (ToolResult(block.tool_use_id, result_text(block, at),
                                                       is_error=bool(block.is_error)),)))
        elif block.type in DROPPED_BLOCKS:
            continue
        else:
            raise UnsupportedParameter(f"Content blocks of type `{block.type}` are not supported in a "
                                       f"{msg.role} message.", param=f"{at}.type")
    if parts or not results:
        results.append(Message(msg.role, tuple(parts)))
    return results


def result_text(block: Block, at: str) -> str:
    """A tool_result's content as text (a string, or text blocks)."""
    if block.content is None or isinstance(block.content, str):
        return block.content or ""
    texts = []
    for k, inner in enumerate(block.content):
        if inner.get("type") != "text" or not isinstance(inner.get("text", ""), str):
            raise UnsupportedParameter(f"Tool results may hold text blocks only (got `{inner.get('type')}`).",
                                       param=f"{at}.content[{k}].type")
        texts.append(inner.get("text", ""))
    return "\n".join(texts)


def image_url(block: Block, at: str) -> str:
    """An image block's source as a URL (base64 data becomes a data: URL)."""
    source = block.source or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise InvalidRequest(f"`{at}.source` must be a base64 or url image source.", param=f"{at}.source")


def tool_choice(value: dict[str, Any] | None, tools: tuple[Any, ...]) -> ToolChoice:
    """auto / any (must call) / tool (this one) / none, with `disable_parallel_tool_use`."""
    value = value or {}
    parallel = not value.get("disable_parallel_tool_use", False)
    kind = value.get("type", "auto" if tools else "none")
    if kind == "auto":
        return ToolChoice("auto" if tools else "none", parallel=parallel)
    if kind == "any":
        return ToolChoice("required", parallel=parallel)
    if kind == "none":
        return ToolChoice("none", parallel=parallel)
    if kind == "tool" and isinstance(value.get("name"), str):
        return ToolChoice("function", value["name"], parallel=parallel)
    raise InvalidRequest("`tool_choice` must be {\"type\": \"auto\" | \"any\" | \"none\"} or "
                         "{\"type\": \"tool\", \"name\": ...}.", param="tool_choice")


def usage(u: Usage) -> dict[str, int]:
    """Anthropic's counts: tokens read from the prompt cache are reported apart from fresh input."""
    return {"input_tokens": u.prompt_tokens - u.cached_tokens, "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached_tokens}


def event(name: str, data: dict[str, Any]) -> bytes:
    return sse_event(name, data).encode()


class AnthropicFormat:
    """Messages SSE: message_start, blocks that never interleave (text or tool_use, each started,
    delta'd and stopped), message_delta with the stop reason and usage, message_stop."""

    media_type = SSE
    keeps_alive = True

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.index = -1  # the open block's index
        self.open: str | None = None  # its type

    def head(self) -> bytes:
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event("message_start", {"type": "message_start", "message": message}) + self.keepalive()

    def keepalive(self) -> bytes:
        return event("ping", {"type": "ping"})

    def _start(self, block: dict[str, Any]) -> bytes:
        out = self._stop()
        self.index += 1
        self.open = block["type"]
        return out + event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                   "content_block": block})

    def _stop(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def text(self, text: str) -> bytes:
        out = b"" if self.open == "text" else self._start({"type": "text", "text": ""})
        return out + event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                   "delta": {"type": "text_delta", "text": text}})

    def tool_call_start(self, call: ToolCallStart) -> bytes:
        return self._start({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})

    def tool_call_delta(self, delta: ToolCallDelta) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                             "delta": {"type": "input_json_delta", "partial_json": delta.arguments}})

    def tail(self, finish: Finish) -> bytes:
        delta = {"stop_reason": stop_reason(finish), "stop_sequence": finish.stop_sequence}
        return (self._stop() + event("message_delta", {"type": "message_delta", "delta": delta,
                                                       "usage": usage(finish.usage)})
                + event("message_stop", {"type": "message_stop"}))

    def error(self, err: RouterError) -> bytes:
        return self._stop() + event("error", error_body(ANTHROPIC, err))

    def body(self, outcome: Outcome) -> Any:
        content: list[dict[str, Any]] = [{"type": "text", "text": outcome.text}] if outcome.text else []
        for call in outcome.tool_calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": json.loads(call.arguments or "{}")})
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason(outcome.finish), "stop_sequence": outcome.finish.stop_sequence,
                "usage": usage(outcome.finish.usage)}


def stop_reason(finish: Finish) -> str:
    return "stop_sequence" if finish.stop_sequence is not None else STOP_REASONS[finish.reason]


def build() -> APIRouter:
    api = APIRouter(tags=["anthropic"])

    # Claude Code posts to /v1/messages?beta=true: the query string and anthropic-* headers change nothing.
    @api.post("/v1/messages", openapi_extra=openapi_body(MessagesRequest))
    async def messages(request: HTTPRequest):
        req, internal = await parse(request, MessagesRequest)
        route = route_request(request, internal)
        return await answer(request, dialect=ANTHROPIC, route=route, internal=internal,
                            fmt=AnthropicFormat(route.model_id), stream=req.stream)

    @api.post("/v1/messages/count_tokens", openapi_extra=openapi_body(CountTokensRequest))
    async def count_tokens(request: HTTPRequest):
        _, internal = await parse(request, CountTokensRequest)
        route = route_request(request, internal)
        pool = state(request).pool
        return {"input_tokens": await asyncio.get_running_loop().run_in_executor(
            None, pool.count_prompt_tokens, route.model_id, internal)}

    return api

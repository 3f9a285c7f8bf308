"""OpenAI dialect: /v1/chat/completions, /v1/completions (`suffix` = FIM), /v1/models.

Unknown arguments are refused (as OpenAI does) and every standard sampling parameter is either
honoured or refused by name. `model` is `auto`, a label, or a concrete model id. llama.cpp's
extensions that its clients send are taken as llama-server takes them (llama.vim's instruction
feature warms up with `n_predict: 0`), and chat also answers llama-server's /chat/completions.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import InvalidRequest, ModelNotFound, RouterError, UnsupportedParameter
from models.events import Finish, ToolCallDelta, ToolCallStart, Usage
from models.labels import LABELS
from models.tool_checks import check_tool_request
from models.request import ImagePart, Message, Part, Request, TextPart, ToolCall, ToolResult
from router.dialects.body import openapi_body, parse
from router.dialects.dispatch import answer, route_request
from router.dialects.tools import (
    FunctionDefinition, ToolSpec, internal_response_format, internal_tool_choice, internal_tools,
)
from router.dialects.sampling import MAX_TOKENS_LIMIT, LlamaCppExtras, logit_bias_map, sampling_params, stop_tuple
from router.errors import OPENAI, error_body
from router.state import state
from router.streaming import SSE, Outcome, json_str
from router.superseder import Superseder

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "cancelled": "stop", "error": "stop"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class OpenAISampling(LlamaCppExtras):
    """Fields both OpenAI endpoints take (plus llama.cpp's extensions, which its clients send)."""

    model: str | None = Field(None, description="`auto`, a label (code_edit, fim, chat, instruct) or a model id.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT, description="-1: until the end of generation.")
    n_predict: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT,
                                  description="llama.cpp's name for max_tokens; 0: warm-up (evaluate the prompt only).")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128, description="Only 1 is supported.")
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_fields: list[str] | None = Field(
        None, description="llama.cpp's field filter: accepted; as llama-server does, OpenAI-shaped answers come whole."
    )

    @model_validator(mode="after")
    def _refuse_openai_unhonoured(self) -> OpenAISampling:
        if self.n != 1:
            raise UnsupportedParameter("Only n=1 is supported: send one request per completion.", param="n")
        if self.max_tokens == 0:
            raise InvalidRequest("`max_tokens` must be at least 1 (or -1 for no limit).", param="max_tokens")
        return self

    @property
    def warmup(self) -> bool:
        """llama.cpp's `n_predict: 0` (llama.vim warms its instruction prompt so): evaluate, generate nothing."""
        return self.n_predict == 0 and self.max_tokens is None

    def limit(self, default: int | None) -> int | None:
        value = self.max_tokens if self.max_tokens is not None else self.n_predict
        if value is None:
            return default
        return None if value < 0 else value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def params(self, default_max: int | None, stop: tuple[str, ...] = ()):
        return sampling_params(
            max_tokens=self.limit(default_max),
            temperature=self.temperature,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=stop_tuple(self.stop) + stop,
            logit_bias=logit_bias_map(self.logit_bias),
            **self.extra_params(),
        )


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: dict[str, Any] | str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str = Field("{}", description="The arguments as a JSON text (an object).")


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def internal(self, i: int) -> Message:
        """This message in the internal form: typed parts, developer read as system."""
        role = "system" if self.role == "developer" else self.role
        parts = content_parts(self.content, f"messages[{i}].content")
        if self.content is None and self.role != "assistant":
            raise InvalidRequest(f"`messages[{i}].content` is required for role {self.role}.", param=f"messages[{i}].content")
        if self.role == "tool":
            if not self.tool_call_id:
                raise InvalidRequest(f"`messages[{i}].tool_call_id` is required for role tool: it names the call "
                                     "this result answers.", param=f"messages[{i}].tool_call_id")
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            return Message("tool", (ToolResult(self.tool_call_id or "", text, name=self.name),))
        calls = tuple(tool_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(self.tool_calls or ()))
        return Message(role, parts + calls, name=self.name)  # type: ignore[arg-type]


def content_parts(content: str | list[ContentPart] | None, param: str) -> tuple[Part, ...]:
    """OpenAI content as typed parts: text and images; other part types are refused by name."""
    if content is None:
        return ()
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[Part] = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            parts.append(TextPart(part.text))
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.get("url")
            if not isinstance(url, str):
                raise InvalidRequest("`image_url.url` must be a string.", param=f"{param}[{j}].image_url")
            parts.append(ImagePart(url))
        else:
            raise UnsupportedParameter(
                f"Only text and image_url content parts are supported (got `{part.type}`).", param=f"{param}[{j}].type"
            )
    return tuple(parts)


def tool_call(call: ToolCallIn, param: str) -> ToolCall:
    """A call from the history, its arguments parsed into the object chat templates want."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"`{param}.function.arguments` is not JSON: {exc.msg}.", param=f"{param}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"`{param}.function.arguments` must be a JSON object.", param=f"{param}.function.arguments")
    return ToolCall(call.id, call.function.name, arguments)


class ChatRequest(OpenAISampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = Field(None, description="Only false is supported.")
    top_logprobs: int | None = Field(None, description="Not supported.")
    tools: list[ToolSpec] | None = Field(None, description="Function tools (OpenAI shape).")
    tool_choice: str | dict[str, Any] | None = Field(None, description="none, auto, required or a named function.")
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = Field(None, description="Legacy form of `tools`.")
    function_call: str | dict[str, Any] | None = Field(None, description="Legacy form of `tool_choice`.")
    response_format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema.")
    metadata: dict[str, str] | None = None
    store: bool | None = Field(None, description="Only false is supported.")

    @model_validator(mode="after")
    def _refuse_chat_unhonoured(self) -> ChatRequest:
        if self.logprobs:
            raise UnsupportedParameter("`logprobs` is not supported.", param="logprobs")
        if self.top_logprobs is not None:
            raise UnsupportedParameter("`top_logprobs` is not supported.", param="top_logprobs")
        if self.store:
            raise UnsupportedParameter("`store` is not supported.", param="store")
        if self.max_completion_tokens == 0:
            raise InvalidRequest("`max_completion_tokens` must be at least 1.", param="max_completion_tokens")
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def to_request(self) -> Request:
        messages = tuple(msg.internal(i) for i, msg in enumerate(self.messages))
        if not any(m.role == "user" for m in messages):
            raise InvalidRequest("`messages` must contain at least one user message.", param="messages")
        if messages[-1].role == "system":
            raise InvalidRequest("`messages` must not end with a system message.", param="messages")
        specs = self.tools if self.tools is not None else [ToolSpec(function=f) for f in self.functions or ()]
        tools = internal_tools(specs)
        choice = self.tool_choice if self.tool_choice is not None else _legacy_choice(self.function_call)
        request = Request(
            "chat", "/v1/chat/completions", self.model, self.params(None), messages, tools=tools,
            tool_choice=internal_tool_choice(choice, self.parallel_tool_calls, tools),
            output=internal_response_format(self.response_format), stream=self.stream, warmup=self.warmup,
        )
        check_tool_request(request)
        return request


def _legacy_choice(function_call: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """The legacy `function_call` ("none" / "auto" / {"name": N}) as a tool_choice."""
    if isinstance(function_call, dict) and isinstance(function_call.get("name"), str):
        return {"type": "function", "function": {"name": function_call["name"]}}
    return function_call


class CompletionRequest(OpenAISampling):
    prompt: str | list[str] = Field(..., description="The prompt (a list must hold exactly one string).")
    suffix: str | None = Field(None, description="Text after the cursor: turns the request into fill-in-the-middle.")
    echo: bool | None = Field(None, description="Only false is supported.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    logprobs: int | None = Field(None, description="Only 0/null is supported.")

    @model_validator(mode="after")
    def _refuse_completion_unhonoured(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise UnsupportedParameter("Only one prompt per request is supported.", param="prompt")
        if self.echo:
            raise UnsupportedParameter("`echo` is not supported.", param="echo")
        if self.best_of not in (None, 1):
            raise UnsupportedParameter("Only best_of=1 is supported.", param="best_of")
        if self.logprobs:
            raise UnsupportedParameter("`logprobs` is not supported.", param="logprobs")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_request(self) -> Request:
        params = self.params(16)
        if self.suffix is not None:
            return Request("fim", "/v1/completions", self.model, params, prefix=self.text, suffix=self.suffix,
                           warmup=self.warmup)
        return Request("complete", "/v1/completions", self.model, params, prompt=self.text, warmup=self.warmup)




def usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},  # OpenAI's field for prompt-cache hits
    }


class OpenAIFormat:
    """SSE chunks for chat.completion.chunk / text_completion, with precomputed JSON around the text."""

    media_type = SSE

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.keeps_alive = chat  # agents wait on chats; FIM and completions keep their status codes
        self.model = model
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._envelope = f'"id":"{self.id}","object":"{obj}","created":{self.created},"model":{json_str(model)}'
        if chat:
            self._open = 'data: {' + self._envelope + ',"choices":[{"index":0,"delta":{"content":'
            self._close = '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._open = 'data: {' + self._envelope + ',"choices":[{"index":0,"text":'
            self._close = ',"logprobs":null,"finish_reason":null}]}\n\n'

    def head(self) -> bytes:
        if not self.chat:
            return b""
        return ('data: {' + self._envelope + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}]}\n\n').encode()

    def keepalive(self) -> bytes:
        """An SSE comment: every SSE client skips it."""
        return b": keep-alive\n\n"

    def text(self, text: str) -> bytes:
        return (self._open + json_str(text) + self._close).encode()

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return ('data: {' + self._envelope + ',"choices":[{"index":0,"delta":' + json.dumps(delta, ensure_ascii=False)
                + ',"logprobs":null,"finish_reason":null}]}\n\n').encode()

    def tool_call_start(self, event: ToolCallStart) -> bytes:
        """The id and the name, once per call (clients concatenate every later string field)."""
        call = {"index": event.index, "id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
        return self._delta({"tool_calls": [call]})

    def tool_call_delta(self, event: ToolCallDelta) -> bytes:
        return self._delta({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})

    def tail(self, finish: Finish) -> bytes:
        reason = json_str(FINISH[finish.reason])
        delta = '"delta":{}' if self.chat else '"text":""'
        out = 'data: {' + self._envelope + ',"choices":[{"index":0,' + delta + ',"logprobs":null,"finish_reason":' + reason + '}]}\n\n'
        if self.include_usage:
            u = usage(finish.usage)
            out += ('data: {' + self._envelope + ',"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
                    '"total_tokens":%d}}\n\n') % (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
        return (out + "data: [DONE]\n\n").encode()

    def error(self, err: RouterError) -> bytes:
        return ("data: " + json.dumps(error_body(OPENAI, err)) + "\n\n").encode()

    def body(self, outcome: Outcome) -> Any:
        reason = FINISH[outcome.finish.reason]
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": outcome.text}
            if outcome.tool_calls:
                message["content"] = outcome.text or None
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in outcome.tool_calls
                ]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": outcome.text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return {
            "id": self.id, "object": obj, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage(outcome.finish.usage), "system_fingerprint": None,
        }


def model_entries(request: HTTPRequest) -> list[dict[str, Any]]:
    """OpenAI model objects, with `capabilities` as Ollama names them (tools where the template renders them)."""
    created = int(state(request).started_at)
    router = state(request).router
    entries = [{"id": name, "object": "model", "created": created, "owned_by": "router"} for name in ["auto", *LABELS]]
    for spec in router.catalog.models:
        caps = router.capabilities(spec)
        entries.append({"id": spec.id, "object": "model", "created": created, "owned_by": "router",
                        "capabilities": ["embedding"] if spec.embedding else ["completion"]
                        + (["insert"] if caps.fim else []) + (["tools"] if caps.tools is not False else [])})
    return entries


def build() -> APIRouter:
    api = APIRouter(tags=["openai"])

    @api.post("/chat/completions", openapi_extra=openapi_body(ChatRequest), include_in_schema=False)  # llama-server's
    @api.post("/v1/chat/completions", openapi_extra=openapi_body(ChatRequest))
    async def chat_completions(request: HTTPRequest):
        req, internal = await parse(request, ChatRequest)
        route = route_request(request, internal)
        fmt = OpenAIFormat(True, route.model_id, req.include_usage)
        return await answer(request, dialect=OPENAI, route=route, internal=internal, fmt=fmt, stream=req.stream)

    @api.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(request: HTTPRequest):
        req, internal = await parse(request, CompletionRequest)
        route = route_request(request, internal)
        fim = internal.kind == "fim" and not internal.warmup  # a warm-up supersedes no real request
        key = Superseder.key(request, OPENAI, internal, req.id_slot) if fim else None
        fmt = OpenAIFormat(False, route.model_id, req.include_usage)
        return await answer(
            request, dialect=OPENAI, route=route, internal=internal, fmt=fmt, stream=req.stream, supersede_key=key
        )

    @api.get("/v1/models")
    async def list_models(request: HTTPRequest):
        return {"object": "list", "data": model_entries(request)}

    @api.get("/v1/models/{model_id:path}")
    async def get_model(request: HTTPRequest, model_id: str):
        for entry in model_entries(request):
            if entry["id"] == model_id:
                return entry
        raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")

    return api

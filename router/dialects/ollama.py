"""Ollama dialect, for Continue, Twinny and other Ollama-speaking tools: /, /api/*.

`/api/generate` takes `suffix` (FIM), `raw`, `options`, `keep_alive` and streams NDJSON by default;
a prompt holding FIM tokens (Twinny sends them without `raw`) is passed through raw, never wrapped in
a chat template. An empty prompt loads the model, or unloads it with `keep_alive: 0`. After an
answer, `keep_alive: 0` unloads the model and a negative one pins it; a positive duration is
accepted, and the model then follows the router's own idle TTL (idle_ttl_s).
`/api/show`'s template mentions `.Suffix` for FIM-capable models so Continue sends native FIM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.catalog import HFSource, ModelSpec
from models.errors import InvalidRequest, ModelNotFound, RouterError, UnsupportedParameter
from models.events import Finish, ToolCallDelta, ToolCallStart
from models.labels import LABELS
from models.request import ImagePart, Message, Part, Request, TextPart, ToolCall, ToolChoice, ToolResult, text_message
from models.tool_checks import check_tool_request
from router.dialects.body import openapi_body, parse, read_json, validate
from router.dialects.dispatch import answer, route_request
from router.dialects.sampling import MAX_TOKENS_LIMIT, sampling_params, stop_tuple
from router.dialects.tools import ToolSpec, internal_tools, ollama_format
from router.errors import OLLAMA, error_body
from router.routing import AUTO_NAMES, Route
from router.state import state
from router.streaming import NDJSON, CallCollector, CollectedCall, Outcome, json_str
from router.superseder import Superseder

# The Ollama version /api/version reports: clients gate features on it, and Codex `--oss` refuses
# any Ollama older than 0.13.4, the first with the Responses API that Codex then speaks.
OLLAMA_VERSION = "0.13.4"
DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "cancelled": "stop", "error": "stop"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive in seconds: a number (seconds) or a Go duration ("5m", "1h30m", "-1s")."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidRequest("`keep_alive` must be a duration such as \"5m\" or a number of seconds.", param="keep_alive")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise InvalidRequest(f"`keep_alive` {value!r} is not a duration such as \"5m\" or \"-1\".", param="keep_alive")
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


class OllamaOptions(BaseModel):
    """Runtime options: sampling ones are honoured; load-time ones accepted (the catalog sets them)."""

    model_config = ConfigDict(extra="forbid")

    num_predict: int | None = Field(None, ge=-2, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = Field(
        None, ge=0, description="This request's context: at most the model's (larger is refused), 0 = the model's."
    )
    # Accepted: load-time settings decided by the catalog, or knobs at their default.
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    low_vram: bool | None = None
    numa: bool | None = None
    f16_kv: bool | None = None
    vocab_only: bool | None = None
    logits_all: bool | None = None
    mirostat: int | None = Field(None, description="Only 0 (off).")
    mirostat_eta: float | None = None
    mirostat_tau: float | None = None
    tfs_z: float | None = Field(None, description="Only 1 (off).")

    @model_validator(mode="after")
    def _refuse_unhonoured(self) -> OllamaOptions:
        if self.mirostat not in (None, 0):
            raise UnsupportedParameter("`options.mirostat` is not supported (only 0).", param="options.mirostat")
        if self.tfs_z not in (None, 1, 1.0):
            raise UnsupportedParameter("`options.tfs_z` is not supported (only 1).", param="options.tfs_z")
        return self

    def params(self):
        limit = self.num_predict
        return sampling_params(
            max_tokens=None if limit is None or limit < 0 else limit,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            typical_p=self.typical_p, repeat_penalty=self.repeat_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=self.seed, stop=stop_tuple(self.stop, "options.stop"),
            num_ctx=self.num_ctx or None,
        )


class OllamaCommon(BaseModel):
    """Fields /api/generate and /api/chat share. Unknown top-level keys are ignored, as Ollama does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="`auto`, a label or a model id (`:latest` is optional).")
    stream: bool = True
    options: OllamaOptions | None = None
    keep_alive: str | float | int | None = Field(None, description="Duration or seconds; 0 unloads after answering.")
    format: str | dict[str, Any] | None = Field(None, description="\"json\" or a JSON Schema: the answer is grammar-constrained.")
    think: bool | str | None = Field(None, description="Only false (these models do not think).")

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: Any) -> Any:
        parse_keep_alive(v)
        return v

    @model_validator(mode="after")
    def _refuse_common(self) -> OllamaCommon:
        if self.think not in (None, False, "false", ""):
            raise UnsupportedParameter("`think` is not supported by these models.", param="think")
        return self

    def params(self):
        return self.options.params() if self.options else sampling_params()

    @property
    def keep_alive_s(self) -> float | None:
        return parse_keep_alive(self.keep_alive)


class GenerateRequest(OllamaCommon):
    prompt: str = ""
    suffix: str | None = Field(None, description="Text after the cursor: fill-in-the-middle.")
    system: str | None = None
    raw: bool = False
    template: str | None = Field(None, description="Not supported: each model's own template is used.")
    context: list[int] | None = Field(None, description="Not supported (deprecated in Ollama).")
    images: list[str] | None = Field(None, description="Not supported (text models).")
    fim_trim: bool | None = Field(
        None, description="Router: end a FIM answer where the middle ends (false: the model's own end); unset: the "
        "server's fim_trim setting.",
    )

    @model_validator(mode="after")
    def _refuse_generate(self) -> GenerateRequest:
        if self.template:
            raise UnsupportedParameter("A custom `template` is not supported.", param="template")
        if self.context:
            raise UnsupportedParameter("`context` is not supported; send the text again.", param="context")
        if self.images:
            raise UnsupportedParameter("Images are not supported on /api/generate; use /api/chat.", param="images")
        return self

    def params(self):
        params = super().params()
        return params if self.fim_trim is None else dataclasses.replace(params, fim_trim=self.fim_trim)

    def to_request(self) -> Request:
        """FIM with a suffix; otherwise a completion, which becomes a chat turn once routed (`as_chat`)."""
        system = self.system or ""
        output = ollama_format(self.format)
        if self.suffix is not None:
            if output.kind != "text":
                raise UnsupportedParameter("`format` cannot shape a fill-in-the-middle completion (with `suffix`).",
                                           param="format")
            return Request("fim", "/api/generate", self.model, self.params(), prefix=self.prompt, suffix=self.suffix,
                           system=system)
        request = Request("complete", "/api/generate", self.model, self.params(), prompt=self.prompt, system=system,
                          output=output)
        check_tool_request(request, output_param="format")
        return request


def as_chat(request: Request) -> Request:
    """A non-raw /api/generate prompt that is not code completion: the model's chat template wraps it."""
    messages = ((text_message("system", request.system),) if request.system else ()) + (
        text_message("user", request.prompt),)
    return dataclasses.replace(request, kind="chat", messages=messages, prompt="", system="")


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def internal(self, i: int) -> Message:
        if self.role == "tool":
            return Message("tool", (ToolResult(self.tool_call_id or "", self.content, name=self.tool_name),))
        parts: list[Part] = [TextPart(self.content)]
        parts += [ImagePart(image) for image in self.images or ()]
        parts += [ToolCall(c.id or f"call_{i}_{j}", c.function.name, c.function.arguments)
                  for j, c in enumerate(self.tool_calls or ())]
        return Message(self.role, tuple(parts))


class OllamaChatRequest(OllamaCommon):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[ToolSpec] | None = Field(None, description="Function tools (the OpenAI chat shape).")

    def to_request(self) -> Request:
        if self.messages and not any(m.role == "user" for m in self.messages):
            raise InvalidRequest("`messages` must contain at least one user message.", param="messages")
        messages = tuple(m.internal(i) for i, m in enumerate(self.messages))
        tools = internal_tools(self.tools)
        # Ollama has no tool_choice: tools present means the model may call them.
        # Ollama sends calls whole, so they are always checked whole first (stream=False for the parser).
        request = Request("chat", "/api/chat", self.model, self.params(), messages, tools=tools,
                          tool_choice=ToolChoice("auto" if tools else "none"), output=ollama_format(self.format))
        check_tool_request(request, output_param="format")
        return request




class ShowRequest(BaseModel):
    """/api/show's body: the model by `model` (or the older `name`); published so fuzzers reach it."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    name: str | None = None
    verbose: bool | None = None


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OllamaFormat:
    """NDJSON lines (or one object): `response` for generate, `message` for chat; counts in ns at the end.

    Tool calls go out whole, with arguments as objects, on the last line (as Ollama sends them)."""

    media_type = NDJSON
    keeps_alive = False  # NDJSON has no line a client would skip

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.calls = CallCollector()
        self.started = time.perf_counter()
        self.created_at = now_iso()
        head = '{"model":' + json_str(model) + ',"created_at":"' + self.created_at + '",'
        if chat:
            self._open = head + '"message":{"role":"assistant","content":'
            self._close = '},"done":false}\n'
        else:
            self._open = head + '"response":'
            self._close = ',"done":false}\n'

    def final(self, text: str, finish: Finish, calls: list[CollectedCall]) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": text}
            if calls:
                obj["message"]["tool_calls"] = [
                    {"id": c.id, "function": {"index": i, "name": c.name, "arguments": json.loads(c.arguments or "{}")}}
                    for i, c in enumerate(calls)
                ]
        else:
            obj["response"] = text
        u = finish.usage
        obj.update({
            "done": True,
            "done_reason": DONE_REASON[finish.reason],
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": int(u.load_ms * 1e6),
            "prompt_eval_count": u.prompt_tokens,
            "prompt_eval_duration": int(u.prompt_ms * 1e6),
            "eval_count": u.completion_tokens,
            "eval_duration": int(u.predicted_ms * 1e6),
        })
        if not self.chat:
            obj["context"] = []
        return obj

    def head(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        return (self._open + json_str(text) + self._close).encode()

    def tool_call_start(self, event: ToolCallStart) -> bytes:
        self.calls.add(event)
        return b""

    def tool_call_delta(self, event: ToolCallDelta) -> bytes:
        self.calls.add(event)
        return b""

    def tail(self, finish: Finish) -> bytes:
        return (json.dumps(self.final("", finish, self.calls.calls), ensure_ascii=False) + "\n").encode()

    def error(self, err: RouterError) -> bytes:
        return (json.dumps(error_body(OLLAMA, err)) + "\n").encode()

    def body(self, outcome: Outcome) -> Any:
        return self.final(outcome.text, outcome.finish, outcome.tool_calls)


# ----------------------------------------------------------------------------- model listing


def spec_digest(spec: ModelSpec) -> str:
    sha = spec.source.sha256 if isinstance(spec.source, HFSource) else None
    return sha or hashlib.sha256(spec.id.encode()).hexdigest()


def family_of(request: HTTPRequest, spec: ModelSpec | None) -> str:
    """Ollama's `details.family`: the GGUF header's architecture (qwen2, llama...), as Ollama reports it."""
    if spec is None:
        return "router"
    return state(request).router.capabilities(spec).architecture or "unknown"


def fim_capable(request: HTTPRequest, spec: ModelSpec) -> bool:
    known = state(request).router.capabilities(spec).fim
    return known if known is not None else "fim" in spec.labels


def details(family: str) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": "", "quantization_level": ""}


def resolve_name(request: HTTPRequest, name: str | None) -> tuple[str, ModelSpec | None]:
    """(name as asked, spec) for /api/show & load/unload: auto -> None spec; label -> its model; id -> itself."""
    router = state(request).router
    asked = (name or "").strip()
    bare = asked[:-len(":latest")] if asked.endswith(":latest") else asked
    if bare in AUTO_NAMES:
        return asked or "auto", None
    if bare in LABELS:
        return asked, router.model_for_label(bare)[0]
    spec = router.catalog.get(bare) or router.catalog.get(asked)
    if spec is None:
        raise ModelNotFound(f"model '{asked}' not found", param="model")
    return asked, spec


def show_template(fim: bool) -> str:
    chat = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    if not fim:
        return chat
    return "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{- else }}" + chat + "{{- end }}"


def tag_entry(request: HTTPRequest, name: str, spec: ModelSpec | None) -> dict[str, Any]:
    modified = datetime.fromtimestamp(state(request).started_at, timezone.utc)
    return {
        "name": name, "model": name, "modified_at": modified.isoformat(),
        "size": (spec.weights_bytes or 0) if spec is not None else 0,
        "digest": spec_digest(spec) if spec is not None else hashlib.sha256(name.encode()).hexdigest(),
        "details": details(family_of(request, spec)),
    }


async def tags(request: HTTPRequest) -> dict[str, Any]:
    router = state(request).router
    entries = [tag_entry(request, "auto", None)]
    for label in LABELS:
        try:
            entries.append(tag_entry(request, label, router.model_for_label(label)[0]))
        except RouterError:
            continue
    entries += [tag_entry(request, spec.id, spec) for spec in router.catalog.models]
    return {"models": entries}


async def show(request: HTTPRequest) -> dict[str, Any]:
    req = validate(ShowRequest, await read_json(request))
    name = req.model or req.name
    if not name or not name.strip():
        raise InvalidRequest("`model` is required.", param="model")
    _, spec = resolve_name(request, name)
    router = state(request).router
    if spec is None:  # auto: whatever the router can reach; its FIM requests go to the fim label's model
        generators = router.generators()
        fim = any(fim_capable(request, s) for s in generators)
        tools = any(router.capabilities(s).tools is not False for s in generators)
        n_ctx = max((router.capabilities(s).n_ctx for s in generators), default=4096)
        fim_spec = router.model_for_label("fim")[0] if fim else None
    else:
        fim = fim_capable(request, spec) and not spec.embedding
        tools = router.capabilities(spec).tools is not False
        n_ctx = router.capabilities(spec).n_ctx
        fim_spec = spec
    family = family_of(request, spec)
    stops = router.capabilities(fim_spec).fim_stops if fim and fim_spec is not None else ()
    parameters = "\n".join([f"num_ctx {n_ctx}"] + [f"stop {json.dumps(s, ensure_ascii=False)}" for s in stops])
    embedding = spec is not None and spec.embedding
    template = "" if embedding else show_template(fim)
    capabilities = ["embedding"] if embedding else \
        ["completion"] + (["insert"] if fim else []) + (["tools"] if tools else [])
    return {
        "license": "",
        "modelfile": f"# served by prompt-router\nFROM {spec.id if spec else 'auto'}\nTEMPLATE \"\"\"{template}\"\"\"\n"
                     + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
        "parameters": parameters,
        "template": template,
        "details": details(family),
        "model_info": {"general.architecture": family, f"{family}.context_length": n_ctx},
        "capabilities": capabilities,
        "modified_at": now_iso(),
    }


async def ps(request: HTTPRequest) -> dict[str, Any]:
    app_state = state(request)
    ttl = app_state.settings.idle_ttl_s
    out = []
    for st in app_state.pool.status():
        if not st.loaded:
            continue
        spec = app_state.catalog.get(st.id)
        last = st.last_used or time.time()
        expires = "0001-01-01T00:00:00Z" if st.pinned or not ttl else \
            datetime.fromtimestamp(last + ttl, timezone.utc).isoformat()
        out.append({
            "name": st.id, "model": st.id, "size": st.size_bytes or 0,
            "digest": spec_digest(spec) if spec else "", "details": details(family_of(request, spec)),
            "expires_at": expires, "size_vram": 0,
        })
    return {"models": out}


# ----------------------------------------------------------------------------- generation


async def load_or_unload(request: HTTPRequest, req: OllamaCommon, chat: bool) -> dict[str, Any]:
    """Empty prompt / no messages: load the model, or unload it when keep_alive is 0."""
    asked, spec = resolve_name(request, req.model)
    app_state = state(request)
    pool = app_state.pool
    keep = req.keep_alive_s
    specs = [spec] if spec is not None else list(app_state.catalog.models)
    loop = asyncio.get_running_loop()
    if keep is not None and keep == 0:
        for s in specs:
            await loop.run_in_executor(None, pool.unload, s.id)
        reason = "unload"
    else:
        if spec is not None:
            await loop.run_in_executor(None, lambda: pool.preload(spec.id, pin=keep is not None and keep < 0))
        reason = "load"
    obj: dict[str, Any] = {"model": asked, "created_at": now_iso(), "done": True, "done_reason": reason}
    if chat:
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    return obj


def keep_alive_hook(request: HTTPRequest, route: Route, keep: float | None) -> Callable[[], Any] | None:
    """keep_alive 0: unload once answered; negative: keep it loaded (pinned)."""
    if keep is None or keep > 0:
        return None
    pool = state(request).pool
    loop = asyncio.get_running_loop()
    if keep == 0:
        return lambda: loop.run_in_executor(None, pool.unload, route.model_id)
    return lambda: loop.run_in_executor(None, lambda: pool.preload(route.model_id, pin=True))


async def generate(request: HTTPRequest):
    req, internal = await parse(request, GenerateRequest)
    if not req.prompt and req.suffix is None:
        return await load_or_unload(request, req, chat=False)
    route = route_request(request, internal)
    key = Superseder.key(request, OLLAMA, internal) if internal.kind == "fim" else None
    if internal.kind == "complete" and not req.raw and route.label != "fim":
        # raw, or a prompt that holds FIM tokens / raw code, is never wrapped in a chat template
        internal = as_chat(internal)
    fmt = OllamaFormat(route.model_id, chat=False)
    return await answer(request, dialect=OLLAMA, route=route, internal=internal, fmt=fmt, stream=req.stream,
                        supersede_key=key, after=keep_alive_hook(request, route, req.keep_alive_s))


async def chat(request: HTTPRequest):
    req, internal = await parse(request, OllamaChatRequest)
    if not req.messages:
        return await load_or_unload(request, req, chat=True)
    route = route_request(request, internal)
    fmt = OllamaFormat(route.model_id, chat=True)
    return await answer(request, dialect=OLLAMA, route=route, internal=internal, fmt=fmt, stream=req.stream,
                        after=keep_alive_hook(request, route, req.keep_alive_s))


def build() -> APIRouter:
    api = APIRouter(tags=["ollama"])

    @api.get("/", response_class=PlainTextResponse)
    async def root():
        return "Ollama is running"

    @api.head("/", include_in_schema=False)
    async def root_head():
        return PlainTextResponse("")

    @api.get("/api/version")
    async def version():
        return {"version": OLLAMA_VERSION}

    api.add_api_route("/api/tags", tags, methods=["GET"])
    api.add_api_route("/api/show", show, methods=["POST"], openapi_extra=openapi_body(ShowRequest))
    api.add_api_route("/api/ps", ps, methods=["GET"])
    api.add_api_route("/api/generate", generate, methods=["POST"], openapi_extra=openapi_body(GenerateRequest))
    api.add_api_route("/api/chat", chat, methods=["POST"], openapi_extra=openapi_body(OllamaChatRequest))
    return api

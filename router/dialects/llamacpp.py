"""llama.cpp dialect, for llama.vim and llama.vscode: /infill, /completion, /health, /props.

Bodies follow llama-server: unknown keys are ignored (as llama-server does), `n_predict: 0` is a
warm-up, `n_cmpl` > 1 answers an array, `response_fields` flattens "a/b" paths into top-level keys
literally named "a/b", and `model` may be absent (the default FIM model answers /infill).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.catalog import ModelSpec
from models.errors import ModelNotFound, RouterError, UnsupportedParameter
from models.events import Finish
from models.labels import LABELS
from models.pool import Pool
from models.request import FimFile, Request
from router.dialects.body import openapi_body, parse
from router.dialects.dispatch import answer, route_request, submit
from router.dialects.sampling import MAX_TOKENS_LIMIT, LlamaCppExtras, logit_bias_map, sampling_params, stop_tuple
from router.errors import LLAMACPP, error_body
from router.routing import Route
from router.state import state
from router.streaming import SSE, Outcome, TextOnly, collect, json_str, start_generation
from router.superseder import Superseder

MAX_N_CMPL = 8
STOP_TYPE = {"stop": "eos", "length": "limit", "cancelled": "none", "error": "none"}


class ExtraChunk(BaseModel):
    """One `input_extra` chunk; other keys (llama.vim's `time`) are ignored."""

    model_config = ConfigDict(extra="allow")
    text: str
    filename: str | None = None


class LlamaSampling(LlamaCppExtras):
    """llama-server's generation fields; unknown keys are accepted and ignored, as llama-server does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="Optional: `auto`, a label or a model id.")
    n_predict: int = Field(-1, ge=-1, le=MAX_TOKENS_LIMIT, description="-1: no limit; 0: warm-up only.")
    max_tokens: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    logit_bias: list[Any] | dict[str, Any] | None = None
    response_fields: list[str] | None = Field(None, description="Return only these fields; 'a/b' reaches inside.")
    n_cmpl: int = Field(1, ge=1, le=MAX_N_CMPL, description="Completions to return (an array when > 1).")
    n_indent: int | None = Field(None, ge=0, description="Accepted as a hint.")

    @model_validator(mode="after")
    def _check_llama(self) -> LlamaSampling:
        if self.n_cmpl > 1 and self.stream:
            raise UnsupportedParameter("`n_cmpl` > 1 cannot be streamed.", param="n_cmpl")
        return self

    @property
    def limit(self) -> int:
        return self.max_tokens if self.max_tokens is not None else self.n_predict

    def params(self, seed_offset: int = 0):
        limit = self.limit
        return sampling_params(
            max_tokens=None if limit < 0 else limit,
            temperature=self.temperature,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=None if self.seed is None or self.seed < 0 else self.seed + seed_offset,
            stop=stop_tuple(self.stop),
            logit_bias=logit_bias_map(self.logit_bias),
            **self.extra_params(),
        )


class InfillRequest(LlamaSampling):
    input_prefix: str = Field(..., description="Text before the cursor.")
    input_suffix: str = Field(..., description="Text after the cursor.")
    input_extra: list[ExtraChunk] = Field(default_factory=list, description="Repo context chunks {text, filename}.")
    prompt: str = Field("", description="The current line up to the cursor, appended to the prefix.")

    def to_request(self, seed_offset: int = 0) -> Request:
        return Request(
            "fim",
            "/infill",
            self.model,
            self.params(seed_offset),
            prefix=self.input_prefix,
            suffix=self.input_suffix,
            prompt=self.prompt,
            extra=tuple(FimFile(text=c.text, filename=c.filename) for c in self.input_extra),
            warmup=self.limit == 0,
        )


class LlamaCompletionRequest(LlamaSampling):
    prompt: str | list[str] = Field(..., description="The raw prompt (templated FIM prompts welcome).")

    @model_validator(mode="after")
    def _one_prompt(self) -> LlamaCompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise UnsupportedParameter("Only one text prompt per request is supported.", param="prompt")
        return self

    def to_request(self, seed_offset: int = 0) -> Request:
        text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return Request("complete", "/completion", self.model, self.params(seed_offset), prompt=text, warmup=self.limit == 0)




def timings(finish: Finish) -> dict[str, float]:
    def per(ms: float, n: int) -> tuple[float, float]:
        return (ms / n if n else 0.0, 1000.0 * n / ms if ms > 0 else 0.0)

    u = finish.usage
    p_tok, p_sec = per(u.prompt_ms, u.prompt_tokens)
    g_tok, g_sec = per(u.predicted_ms, u.completion_tokens)
    return {
        "cache_n": u.cached_tokens,
        "prompt_n": u.prompt_tokens, "prompt_ms": u.prompt_ms,
        "prompt_per_token_ms": p_tok, "prompt_per_second": p_sec,
        "predicted_n": u.completion_tokens, "predicted_ms": u.predicted_ms,
        "predicted_per_token_ms": g_tok, "predicted_per_second": g_sec,
    }


def pick_fields(obj: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """llama-server's response_fields: keep the named fields; "a/b" becomes a key literally named "a/b"."""
    if not fields:
        return obj
    out: dict[str, Any] = {}
    for path in fields:
        node: Any = obj
        for part in path.split("/"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                break
        else:
            out[path] = node
    return out


class LlamaFormat(TextOnly):
    """llama-server's non-OpenAI shape: SSE `data: {"content": ...}`, a final object with `stop: true`."""

    media_type = SSE
    keeps_alive = False  # headers wait for the first event: editors keep their status codes

    def __init__(self, model: str, req: LlamaSampling) -> None:
        self.model = model
        self.req = req
        self._open = 'data: {"index":0,"content":'
        self._close = ',"tokens":[],"stop":false,"id_slot":%d}\n\n' % (req.id_slot if req.id_slot is not None else -1)

    def result(self, text: str, finish: Finish, index: int = 0) -> dict[str, Any]:
        # As llama-server: a stop string is a "word" stop, named; so is the text a FIM answer was cut at.
        word = finish.fim_cut.at if finish.fim_cut is not None else finish.stop_sequence
        obj = {
            "index": index,
            "content": text,
            "tokens": [],
            "id_slot": self.req.id_slot if self.req.id_slot is not None else 0,
            "stop": True,
            "model": self.model,
            "tokens_predicted": finish.usage.completion_tokens,
            "tokens_evaluated": finish.usage.prompt_tokens,
            "generation_settings": self.settings(),
            "has_new_line": "\n" in text,
            "truncated": finish.truncated,
            "stop_type": "word" if word is not None else STOP_TYPE[finish.reason],
            "stopping_word": word or "",
            "tokens_cached": finish.usage.cached_tokens,
            "timings": timings(finish),
        }
        return pick_fields(obj, self.req.response_fields)

    def settings(self) -> dict[str, Any]:
        r = self.req
        p = r.params()
        return {
            "model": self.model, "n_predict": r.limit, "temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
            "min_p": p.min_p, "typical_p": p.typical_p, "repeat_penalty": p.repeat_penalty, "seed": p.seed,
            "stop": list(p.stop), "stream": r.stream, "n_cmpl": r.n_cmpl,
        }

    def head(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        return (self._open + json_str(text) + self._close).encode()

    def tail(self, finish: Finish) -> bytes:
        return ("data: " + json.dumps(self.result("", finish), ensure_ascii=False) + "\n\n").encode()

    def error(self, err: RouterError) -> bytes:
        return ("data: " + json.dumps(error_body(LLAMACPP, err)) + "\n\n").encode()

    def body(self, outcome: Outcome) -> Any:
        return self.result(outcome.text, outcome.finish)


async def several(request: HTTPRequest, route: Route, req: InfillRequest | LlamaCompletionRequest,
                  fmt: LlamaFormat) -> JSONResponse:
    """n_cmpl > 1: submit them all (the pool queues them), answer an array in order."""
    recorder = state(request).metrics.recorder(LLAMACPP, request.state.endpoint, route.label, route.model_id)
    gens = [submit(request, route, req.to_request(i)) for i in range(req.n_cmpl)]
    results = []
    try:
        for i, gen in enumerate(gens):
            active = await start_generation(gen, request)
            outcome = await collect(active)
            results.append(fmt.result(outcome.text, outcome.finish, index=i))
    except BaseException:  # counted by the error handler
        for gen in gens:
            gen.cancel()
        raise
    recorder.finish(outcome.finish, 200)
    return JSONResponse(results, headers=route.headers())


async def generate(request: HTTPRequest, req: InfillRequest | LlamaCompletionRequest, internal: Request):
    route = route_request(request, internal)
    fmt = LlamaFormat(route.model_id, req)
    if req.n_cmpl > 1:
        return await several(request, route, req, fmt)
    key = None
    if internal.kind == "fim" and not internal.warmup:
        key = Superseder.key(request, LLAMACPP, internal, req.id_slot)
    return await answer(
        request, dialect=LLAMACPP, route=route, internal=internal, fmt=fmt, stream=req.stream, supersede_key=key
    )


def chat_template(pool: Pool, spec: ModelSpec | None) -> str:
    """The template the model really uses once loaded (its GGUF's), else the catalog's override."""
    if spec is None:
        return ""
    backend = pool.backend(spec.id)
    loaded = backend.chat_template if backend is not None else None
    return loaded or spec.chat_template or ""


def model_for_props(request: HTTPRequest, name: str | None) -> ModelSpec | None:
    """The catalog spec /props describes: the named one, else the default FIM model, else the first."""
    router = state(request).router
    catalog = router.catalog
    if name:
        spec = catalog.get(name)
        if spec is None and (name == "auto" or name in LABELS):
            spec, _ = router.model_for_label("fim" if name == "auto" else name)
        if spec is None:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        return spec
    try:
        return router.model_for_label("fim")[0]
    except RouterError:
        return catalog.models[0] if catalog.models else None


def build() -> APIRouter:
    api = APIRouter(tags=["llama.cpp"])

    @api.post("/infill", openapi_extra=openapi_body(InfillRequest))
    async def infill(request: HTTPRequest):
        return await generate(request, *await parse(request, InfillRequest))

    @api.post("/completion", openapi_extra=openapi_body(LlamaCompletionRequest))
    async def completion(request: HTTPRequest):
        return await generate(request, *await parse(request, LlamaCompletionRequest))

    @api.post("/completions", openapi_extra=openapi_body(LlamaCompletionRequest), include_in_schema=False)
    async def completion_alias(request: HTTPRequest):
        return await generate(request, *await parse(request, LlamaCompletionRequest))

    @api.get("/health")
    async def health(request: HTTPRequest):
        out: dict[str, Any] = {"status": "ok"}
        warning = state(request).classifier_warning
        out["classifier"] = "shape_only" if warning else "trained"
        if warning:
            out["classifier_warning"] = warning
        return out

    @api.get("/props")
    async def props(request: HTTPRequest, model: str | None = None, autoload: bool | None = None):
        spec = model_for_props(request, model)
        app_state = state(request)
        loaded = {st.id: st for st in app_state.pool.status()}
        n_ctx = app_state.router.capabilities(spec).n_ctx if spec else 0
        path = spec.source_path if spec else ""
        return {
            "default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40,
                                                                       "top_p": 0.95, "min_p": 0.05}},
            "total_slots": 1,
            "model_path": path,
            "model": spec.id if spec else None,
            "model_alias": spec.id if spec else None,
            "chat_template": chat_template(app_state.pool, spec),
            "modalities": {"vision": False, "audio": False},
            "is_sleeping": not (spec and spec.id in loaded and loaded[spec.id].loaded),
            "build_info": "prompt-router",
            "classifier": "shape_only" if app_state.classifier_warning else "trained",
            "classifier_warning": app_state.classifier_warning,
        }

    return api



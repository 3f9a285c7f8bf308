"""llama.cpp dialect, for llama.vim and llama.vscode: /infill, /completion, /health, /props.

Bodies follow llama-server: unknown keys are ignored (as llama-server does), `n_predict: 0` is a
warm-up, `n_cmpl` > 1 answers an array, `response_fields` flattens "a/b" paths into top-level keys
literally named "a/b", and `model` may be absent (the default FIM model answers /infill).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.backend import Done, FimFile, GenerationRequest
from models.errors import ModelNotFound, RouterError, UnsupportedParameter
from router.dialects.body import openapi_body, parse
from router.dialects.dispatch import Superseder, answer, route_request, state, submit
from router.dialects.sampling import MAX_TOKENS_LIMIT, LlamaCppExtras, logit_bias_map, sampling_params, stop_tuple
from router.errors import LLAMACPP, error_body
from router.routing import LABELS
from router.streaming import SSE, collect, json_str, route_headers, start_generation

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

    def generation(self, seed_offset: int = 0) -> GenerationRequest:
        return GenerationRequest(
            kind="fim",
            params=self.params(seed_offset),
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

    def generation(self, seed_offset: int = 0) -> GenerationRequest:
        text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationRequest(kind="complete", params=self.params(seed_offset), prompt=text, warmup=self.limit == 0)


def timings(done: Done) -> dict[str, float]:
    def per(ms: float, n: int) -> tuple[float, float]:
        return (ms / n if n else 0.0, 1000.0 * n / ms if ms > 0 else 0.0)

    p_tok, p_sec = per(done.prompt_ms, done.prompt_tokens)
    g_tok, g_sec = per(done.predicted_ms, done.completion_tokens)
    return {
        "cache_n": done.cached_tokens,
        "prompt_n": done.prompt_tokens, "prompt_ms": done.prompt_ms,
        "prompt_per_token_ms": p_tok, "prompt_per_second": p_sec,
        "predicted_n": done.completion_tokens, "predicted_ms": done.predicted_ms,
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


class LlamaFormat:
    """llama-server's non-OpenAI shape: SSE `data: {"content": ...}`, a final object with `stop: true`."""

    media_type = SSE

    def __init__(self, model: str, req: LlamaSampling) -> None:
        self.model = model
        self.req = req
        self._open = 'data: {"index":0,"content":'
        self._close = ',"tokens":[],"stop":false,"id_slot":%d}\n\n' % (req.id_slot if req.id_slot is not None else -1)

    def result(self, text: str, done: Done, index: int = 0) -> dict[str, Any]:
        obj = {
            "index": index,
            "content": text,
            "tokens": [],
            "id_slot": self.req.id_slot if self.req.id_slot is not None else 0,
            "stop": True,
            "model": self.model,
            "tokens_predicted": done.completion_tokens,
            "tokens_evaluated": done.prompt_tokens,
            "generation_settings": self.settings(),
            "has_new_line": "\n" in text,
            "truncated": done.truncated,
            "stop_type": STOP_TYPE.get(done.finish_reason, "none"),
            "stopping_word": "",
            "tokens_cached": done.cached_tokens,
            "timings": timings(done),
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

    def token(self, text: str) -> bytes:
        return (self._open + json_str(text) + self._close).encode()

    def tail(self, done: Done) -> bytes:
        return ("data: " + json.dumps(self.result("", done), ensure_ascii=False) + "\n\n").encode()

    def error(self, err: RouterError) -> bytes:
        return ("data: " + json.dumps(error_body(LLAMACPP, err)) + "\n\n").encode()

    def body(self, text: str, done: Done) -> Any:
        return self.result(text, done)


async def several(request: Request, route, req: LlamaSampling, fmt: LlamaFormat) -> JSONResponse:
    """n_cmpl > 1: submit them all (the pool queues them), answer an array in order."""
    recorder = state(request).metrics.recorder(LLAMACPP, request.state.endpoint, route.label, route.model_id)
    gens = [submit(request, route, req.generation(i)) for i in range(req.n_cmpl)]
    results = []
    try:
        for i, gen in enumerate(gens):
            active = await start_generation(gen, request)
            outcome = await collect(active)
            results.append(fmt.result(outcome.text, outcome.done, index=i))
    except BaseException:  # counted by the error handler
        for gen in gens:
            gen.cancel()
        raise
    recorder.finish(outcome.done, 200)
    return JSONResponse(results, headers=route_headers(route))


async def generate(request: Request, endpoint: str, model_cls: type[LlamaSampling]):
    req, raw = await parse(request, model_cls)
    route = route_request(request, endpoint, raw, req.model)
    fmt = LlamaFormat(route.model_id, req)
    if req.n_cmpl > 1:
        return await several(request, route, req, fmt)
    gen_request = req.generation()
    key = None
    if gen_request.kind == "fim" and not gen_request.warmup:
        key = Superseder.key(request, LLAMACPP, gen_request, req.id_slot)
    return await answer(
        request, dialect=LLAMACPP, route=route, gen_request=gen_request, fmt=fmt, stream=req.stream, supersede_key=key
    )


def chat_template(pool: Any, spec: Any) -> str:
    """The template the model really uses once loaded (its GGUF's), else the catalog's override."""
    if spec is None:
        return ""
    backend = pool.backend(spec.id) if hasattr(pool, "backend") else None
    return getattr(backend, "chat_template", None) or spec.chat_template or ""


def model_for_props(request: Request, name: str | None):
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
    async def infill(request: Request):
        return await generate(request, "/infill", InfillRequest)

    @api.post("/completion", openapi_extra=openapi_body(LlamaCompletionRequest))
    async def completion(request: Request):
        return await generate(request, "/completion", LlamaCompletionRequest)

    @api.post("/completions", openapi_extra=openapi_body(LlamaCompletionRequest), include_in_schema=False)
    async def completion_alias(request: Request):
        return await generate(request, "/completion", LlamaCompletionRequest)

    @api.get("/health")
    async def health(request: Request):
        out: dict[str, Any] = {"status": "ok"}
        warning = getattr(state(request), "classifier_warning", None)
        out["classifier"] = "shape_only" if warning else "trained"
        if warning:
            out["classifier_warning"] = warning
        return out

    @api.get("/props")
    async def props(request: Request, model: str | None = None, autoload: bool | None = None):
        spec = model_for_props(request, model)
        app_state = state(request)
        loaded = {st.id: st for st in app_state.pool.status()}
        n_ctx = spec.n_ctx if spec else 0
        source = getattr(spec, "source", None) if spec else None
        path = str(getattr(source, "path", "") or getattr(source, "file", "") or "") if source else ""
        return {
            "default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40,
                                                                       "top_p": 0.95, "min_p": 0.05}},
            "total_slots": 1,
            "model_path": path,
            "model": spec.id if spec else None,
            "model_alias": spec.id if spec else None,
            "chat_template": chat_template(app_state.pool, spec),
            "modalities": {"vision": False, "audio": False},
            "is_sleeping": not (spec and getattr(loaded.get(spec.id), "loaded", False)),
            "build_info": "prompt-router",
            "classifier": "shape_only" if getattr(app_state, "classifier_warning", None) else "trained",
            "classifier_warning": getattr(app_state, "classifier_warning", None),
        }

    return api



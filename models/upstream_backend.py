"""A backend that forwards to OpenAI-compatible servers (llama-server, llama-cpp-python's server,
vLLM, Ollama's /v1): the scale-out path, several replicas per model.

Streaming end to end: each SSE line is turned into a TextDelta as soon as it arrives. A request
that fails before its first token is retried on another replica; one that fails later ends with
Finish("error"). FIM goes to llama-server's /infill when the upstream api is
"llama.cpp", otherwise to /v1/completions with a prompt built for the upstream model's family.
Embeddings go to the upstream's /v1/embeddings, answered as one JSON body (its truncation rules apply).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx

from models.backend import BackendOptions
from models.capabilities import Capabilities, family_stops
from models.catalog import ModelSpec, UpstreamSource
from models.chat_messages import openai_messages, openai_response_format, openai_tool_choice, openai_tools
from models.events import Embeddings, Event, Finish, TextDelta, ToolCallDelta, ToolCallStart, Usage
from models.request import Request, SamplingParams
from models.errors import (
    ContextLengthExceeded,
    FimNotSupported,
    InvalidRequest,
    ModelLoadFailed,
    UnsupportedParameter,
    UpstreamUnavailable,
)
from models.replicas import Replica, ReplicaSet
from models.tool_parser import new_call_id
from models.upstream_stream import (
    CANCELLED,
    StreamGuard,
    StreamWatchdog,
    iter_sse_data,
    parse_json,
)

# Generations one replica is sent at once: upstreams batch (llama-server slots, vLLM), and the
# pool sizes its worker threads from `parallel`.
DEFAULT_SLOTS_PER_REPLICA = 4

# Tokens a chat template adds around each message (role markers), counted without rendering it.
CHAT_TOKENS_PER_MESSAGE = 4
# Characters per token assumed where the upstream cannot tokenize for us: real tokenizers give
# about 4 for English and 3 for code, so 3 over-counts slightly, which is the safe side.
CHARS_PER_TOKEN = 3.0

# A router forwarding to another router multiplexes many editors: the far end must not
# treat its concurrent FIM requests as one client superseding itself.
UPSTREAM_USER_AGENT = "prompt-router-upstream/0.1"

_FINISH_REASONS = {"stop": "stop", "length": "length", "eos": "stop", "word": "stop", "limit": "length",
                   "tool_calls": "tool_calls", "function_call": "tool_calls"}


class _ReplicaFailure(Exception):
    """This replica could not serve the request (connection, timeout, 5xx): try another one."""

    def __init__(self, message: str, *, replica_fault: bool = True) -> None:
        super().__init__(message)
        self.replica_fault = replica_fault  # False: the replica is fine (it cut us short on purpose)


@dataclass
class _Call:
    """One upstream request, the same for every replica."""

    path: str
    body: dict[str, Any]
    dialect: str  # "chat" | "completions" | "infill" | "embeddings"
    prompt_tokens: int  # our count, used when the upstream reports no usage
    warmup: bool = False
    t_max_predict_ms: float | None = None  # enforced here when the upstream does not


@dataclass
class _Progress:
    """What one attempt has produced so far."""

    yielded_token: bool = False
    completion_tokens: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    terminal: bool = False
    calls: _UpstreamCalls = field(default_factory=lambda: _UpstreamCalls())


class UpstreamBackend:
    """Backend for a catalog model whose source is `kind: upstream` (models.catalog.UpstreamSource)."""

    def __init__(
        self,
        spec: ModelSpec,
        options: BackendOptions | None = None,
        *,
        health_interval_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        options = options or BackendOptions()
        source = spec.source
        assert isinstance(source, UpstreamSource), "models.factory gives upstream specs only"
        self.model_id: str = spec.id
        self.n_ctx: int = spec.n_ctx
        self.memory_bytes = 0  # the weights live in the upstream's memory, not ours
        self.chat_template = ""  # the upstream renders its own chats
        self.api: str = source.api
        self.upstream_model: str | None = source.upstream_model
        family = source.fim_family or spec.fim_family
        self.fim_family: str | None = self._canonical_family(family) if family else None
        urls = list(source.urls)
        slots = source.parallel or DEFAULT_SLOTS_PER_REPLICA
        self.parallel: int = max(1, slots * len(urls))
        self.options = options

        # Named, so an upstream that is itself a router can tell forwarded traffic from an editor's.
        headers = {"Accept": "text/event-stream", "User-Agent": UPSTREAM_USER_AGENT}
        key_env = source.api_key_env
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise ModelLoadFailed(
                    f"model {self.model_id!r}: environment variable {key_env} (its upstream API key) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        backstop = max(options.first_token_timeout_s, options.idle_stream_timeout_s) + 1.0
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(
                connect=options.connect_timeout_s,
                read=backstop,
                write=backstop,
                pool=options.connect_timeout_s,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.parallel),
        )
        health_paths = ("/health",) if self.api == "llama.cpp" else ("/health", "/v1/models")
        self.replicas = ReplicaSet(
            self.model_id,
            urls,
            self._client,
            slots_per_replica=slots,
            health_paths=health_paths,
            health_timeout_s=min(options.connect_timeout_s, 5.0) + 1.0,
            health_interval_s=health_interval_s,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
        )
        self._watchdog = StreamWatchdog(name=f"upstream-watchdog-{self.model_id}")
        self._memo = threading.local()
        self._closed = False

    def _canonical_family(self, family: str) -> str:
        from models import fim

        try:
            return fim.canonical_family(family)
        except ValueError as exc:
            raise ModelLoadFailed(f"model {self.model_id!r}: {exc}") from None

    # --- Backend protocol ----------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        fim = self.api == "llama.cpp" or self.fim_family is not None
        return Capabilities(self.n_ctx, fim=fim, fim_family=self.fim_family, fim_stops=family_stops(self.fim_family))

    def count_prompt_tokens(self, request: Request) -> int:
        """Exact from llama-server's /tokenize when the estimate comes near n_ctx; an estimate otherwise.

        The pool counts before generate() and generate() needs the count again (usage, when the
        upstream reports none): the last answer per thread is kept so /tokenize runs once.
        """
        memo = getattr(self._memo, "count", None)
        if memo is not None and memo[0] is request:
            return memo[1]
        text, overhead = _prompt_text(request)
        count = overhead + math.ceil(len(text) / CHARS_PER_TOKEN)
        if request.kind == "embed":  # never refused on an estimate: the upstream counts each input itself
            count = min(count, self.n_ctx)
        elif self.api == "llama.cpp" and count >= self.n_ctx // 2:
            exact = self._tokenize(text)
            count = count if exact is None else exact + overhead
        self._memo.count = (request, count)
        return count

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Stream from the least busy replica; fail over to another one until the first token."""
        if self._closed:
            raise UpstreamUnavailable(f"model {self.model_id!r}: backend is closed")
        call = self._prepare(request)
        tried: list[Replica] = []
        failures: list[str] = []
        while True:
            if cancel.is_set():
                yield Finish("cancelled", Usage(prompt_tokens=call.prompt_tokens))
                return
            try:
                replica = self.replicas.acquire(exclude=tried, cancel=cancel, wait_s=self.options.first_token_timeout_s)
            except UpstreamUnavailable as exc:
                if not failures:
                    raise
                raise UpstreamUnavailable(
                    f"every replica of model {self.model_id!r} failed this request ({'; '.join(failures)})"
                    + ("" if len(tried) == len(self.replicas.replicas) else f"; {exc.message}")
                ) from None
            if replica is None:  # cancelled while every replica was busy
                yield Finish("cancelled", Usage(prompt_tokens=call.prompt_tokens))
                return
            guard = StreamGuard(
                cancel,
                first_token_timeout_s=self.options.first_token_timeout_s,
                idle_stream_timeout_s=self.options.idle_stream_timeout_s,
            )
            progress = _Progress()
            self._watchdog.watch(guard)
            try:
                yield from self._attempt(replica, call, guard, progress, cancel)
                return
            except _ReplicaFailure as failure:
                if guard.reason == CANCELLED or cancel.is_set():
                    yield self._done("cancelled", call, progress)
                    return
                message = f"upstream {replica.url}: {failure}"
                if failure.replica_fault:
                    self.replicas.mark_failed(replica, str(failure))
                if progress.yielded_token:
                    yield self._done("error", call, progress, error=f"{message} (failed mid-stream)")
                    return
                tried.append(replica)
                failures.append(message)
            finally:
                self._watchdog.unwatch(guard)
                self.replicas.release(replica)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.replicas.close()
        self._watchdog.close()
        self._client.close()

    # --- building the upstream call ------------------------------------------------------------

    def _prepare(self, request: Request) -> _Call:
        params = request.params
        prompt_tokens = self.count_prompt_tokens(request)
        if request.kind == "embed":
            inputs = [item if isinstance(item, str) else list(item) for item in request.inputs]
            body = {"model": self.upstream_model or self.model_id, "input": inputs, "encoding_format": "float"}
            return _Call(path="/v1/embeddings", body=body, dialect="embeddings", prompt_tokens=prompt_tokens)
        if request.kind == "chat":
            body = {"messages": openai_messages(request.messages), **self._sampling(params)}
            if request.tools:  # passed through unchanged: the upstream renders and parses its own calls
                body["tools"] = openai_tools(request.tools)
                body["tool_choice"] = openai_tool_choice(request.tool_choice)
                body["parallel_tool_calls"] = request.tool_choice.parallel
            response_format = openai_response_format(request.output)
            if response_format is not None:
                body["response_format"] = response_format
            return self._openai_call("/v1/chat/completions", "chat", body, request, prompt_tokens)
        if request.output.kind != "text":
            raise UnsupportedParameter(f"Model {self.model_id!r} is an upstream: a JSON answer is supported on chat "
                                       "requests only.", param="format")
        if request.kind == "complete":
            prompt, stops = self._rewrite_fim_tokens(request.prompt)
            body = {"prompt": prompt, **self._sampling(params, extra_stop=stops)}
            return self._openai_call("/v1/completions", "completions", body, request, prompt_tokens)
        if request.kind == "fim":
            if self.api == "llama.cpp":
                return self._infill_call(request, prompt_tokens)
            if self.fim_family is None:
                raise FimNotSupported(
                    f"model {self.model_id!r} is an upstream with api 'openai' and no fim_family: "
                    "set source.fim_family in the catalog (qwen, starcoder, deepseek, codellama, codestral)"
                )
            prompt, stops = self._fim_prompt(request)
            body = {"prompt": prompt, **self._sampling(params, extra_stop=stops)}
            return self._openai_call("/v1/completions", "completions", body, request, prompt_tokens)
        raise InvalidRequest(f"unknown generation kind {request.kind!r}")

    def _openai_call(self, path: str, dialect: str, body: dict[str, Any], request: Request, prompt_tokens: int) -> _Call:
        body["model"] = self.upstream_model or self.model_id
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if request.warmup:
            body["max_tokens"] = 1  # fills the upstream's prompt cache; the token is dropped
        return _Call(
            path=path,
            body=body,
            dialect=dialect,
            prompt_tokens=prompt_tokens,
            warmup=request.warmup,
            t_max_predict_ms=request.params.t_max_predict_ms,
        )

    def _infill_call(self, request: Request, prompt_tokens: int) -> _Call:
        params = request.params
        body: dict[str, Any] = {
            "input_prefix": request.prefix,
            "input_suffix": request.suffix,
            "input_extra": [
                {"text": f.text, **({"filename": f.filename} if f.filename else {})} for f in request.extra
            ],
            "prompt": request.prompt,
            "n_predict": 0 if request.warmup else (params.max_tokens if params.max_tokens is not None else -1),
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "min_p": params.min_p,
            "typical_p": params.typical_p,
            "repeat_penalty": params.repeat_penalty,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "stop": list(params.stop),
            "cache_prompt": True,
            "stream": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.t_max_predict_ms is not None:
            body["t_max_predict_ms"] = params.t_max_predict_ms
        if params.logit_bias:
            body["logit_bias"] = [[int(k), v] for k, v in params.logit_bias.items()]
        body["model"] = self.upstream_model or self.model_id
        return _Call(path="/infill", body=body, dialect="infill", prompt_tokens=prompt_tokens, warmup=request.warmup)

    def _sampling(self, params: SamplingParams, extra_stop: tuple[str, ...] = ()) -> dict[str, Any]:
        """OpenAI names, plus llama.cpp's extras where they differ from the neutral value."""
        body: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        stop = list(dict.fromkeys(params.stop + extra_stop))
        if stop:
            body["stop"] = stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
        # llama.cpp's sampling knobs, always sent: an omitted one takes the upstream's own
        # default, which differs (llama-cpp-python's server penalises repeats by 1.1 unless told).
        # llama-server, llama-cpp-python and vLLM accept these names; Ollama ignores them.
        body["top_k"] = params.top_k
        body["min_p"] = params.min_p
        body["repeat_penalty"] = params.repeat_penalty
        body["typical_p"] = params.typical_p
        return body

    def _fim_tokens(self):
        """The upstream family's canonical FIM tokens (we cannot read an upstream's vocabulary)."""
        from models import fim

        return fim.family_tokens(self.fim_family)

    def _fim_prompt(self, request: Request) -> tuple[str, tuple[str, ...]]:
        """The FIM prompt and its stop strings, laid out by models.fim for the upstream's family."""
        from models import fim

        built = fim.build_fim_prompt(
            self._fim_tokens(), request.prefix + request.prompt, request.suffix, request.extra, model_id=self.model_id
        )
        return built.text, built.stops

    def _rewrite_fim_tokens(self, prompt: str) -> tuple[str, tuple[str, ...]]:
        """A raw prompt holding another family's FIM tokens, rewritten into the upstream's family."""
        if self.fim_family is None:
            return prompt, ()  # unknown family: the client's prompt goes through as written
        from models import fim

        translated = fim.translate_fim_prompt(prompt, self._fim_tokens(), model_id=self.model_id)
        return (prompt, ()) if translated is None else (translated.text, translated.stops)

    # --- one attempt on one replica ------------------------------------------------------------

    def _attempt(
        self,
        replica: Replica,
        call: _Call,
        guard: StreamGuard,
        progress: _Progress,
        cancel: threading.Event,
    ) -> Iterator[Event]:
        started = time.perf_counter()
        request = self._client.build_request(
            "POST", replica.url + call.path, json=call.body, extensions={"trace": guard.trace}
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _ReplicaFailure(self._describe(exc, guard)) from None
        first_token_at: float | None = None
        try:
            guard.attach_response(response)
            if response.status_code != 200:
                self._raise_for_status(replica, call, response)
            if call.dialect == "embeddings":
                yield from self._embeddings(response, guard, call)
                return
            for payload in iter_sse_data(self._lines(response, guard)):
                if cancel.is_set():
                    break
                if payload == "[DONE]":
                    if progress.finish_reason is None:
                        # llama-cpp-python ends a stream this way when another request waits for
                        # its model: the answer is cut short, not finished.
                        raise _ReplicaFailure(
                            "the upstream ended the stream without a finish reason (interrupted)",
                            replica_fault=False,
                        )
                    progress.terminal = True
                    break
                chunk = parse_json(payload)
                if chunk is None:
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    raise _ReplicaFailure(f"upstream reported an error mid-stream: {_error_text(chunk)}")
                text = self._read_chunk(call.dialect, chunk, progress)
                calls = progress.calls.feed(_chat_delta(chunk)) if call.dialect == "chat" else []
                if text and not call.warmup:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        guard.got_first_token()
                    progress.completion_tokens += 1
                    progress.yielded_token = True
                    text, hit_deadline = _t_max_predict_cut(text, call.t_max_predict_ms, first_token_at)
                    yield TextDelta(text)
                    if hit_deadline:
                        progress.finish_reason = "stop"
                        progress.terminal = True
                        break
                if calls and not call.warmup:  # after the chunk's text: a preamble comes before its call
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        guard.got_first_token()
                    if not text:
                        progress.completion_tokens += 1
                    progress.yielded_token = True
                    yield from calls
                if call.dialect == "infill" and progress.terminal:
                    break
        except httpx.HTTPError as exc:
            raise _ReplicaFailure(self._describe(exc, guard)) from None
        finally:
            response.close()
        if cancel.is_set():
            yield self._done("cancelled", call, progress)
            return
        if not progress.terminal and progress.finish_reason is None:
            raise _ReplicaFailure("the stream ended before the upstream finished the generation")
        ended = time.perf_counter()
        if first_token_at is not None:
            progress.timings.setdefault("prompt_ms", (first_token_at - started) * 1000)
            progress.timings.setdefault("predicted_ms", (ended - first_token_at) * 1000)
        reason = progress.finish_reason or "stop"
        if reason == "stop" and progress.calls.count:
            # vLLM ends a named tool_choice with "stop": a message that holds calls ended for them
            reason = "tool_calls"
        yield self._done(reason, call, progress)

    @staticmethod
    def _embeddings(response: httpx.Response, guard: StreamGuard, call: _Call) -> Iterator[Event]:
        """The upstream's /v1/embeddings answer as our events; a malformed one is this replica's failure."""
        body = parse_json(response.read().decode("utf-8", "replace")) or {}
        guard.got_first_token()
        data = body.get("data")
        if not isinstance(data, list) or len(data) != len(call.body["input"]) \
                or not all(isinstance(item, dict) for item in data):
            raise _ReplicaFailure("its /v1/embeddings answer does not hold one vector per input")
        vectors = [item.get("embedding") for item in sorted(data, key=lambda item: item.get("index", 0))]
        if not all(isinstance(v, list) and v for v in vectors):
            raise _ReplicaFailure("its /v1/embeddings answer holds a vector that is not a list of numbers")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens")
        yield Embeddings(vectors)
        yield Finish("stop", Usage(prompt_tokens=tokens if isinstance(tokens, int) else call.prompt_tokens))

    @staticmethod
    def _lines(response: httpx.Response, guard: StreamGuard) -> Iterator[str]:
        for line in response.iter_lines():
            guard.activity()
            yield line

    @staticmethod
    def _read_chunk(dialect: str, chunk: dict[str, Any], progress: _Progress) -> str:
        """The text of one streamed chunk; records finish reason, usage and timings on the way."""
        if isinstance(chunk.get("usage"), dict):
            progress.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            progress.timings.update(chunk["timings"])
        if dialect == "infill":
            if chunk.get("stop"):
                progress.terminal = True
                progress.finish_reason = _FINISH_REASONS.get(chunk.get("stop_type") or "eos", "stop")
                for ours, theirs in (("prompt_tokens", "tokens_evaluated"), ("completion_tokens", "tokens_predicted")):
                    if isinstance(chunk.get(theirs), int):
                        progress.usage[ours] = chunk[theirs]
                if isinstance(chunk.get("tokens_cached"), int):
                    progress.usage["cached_tokens"] = chunk["tokens_cached"]
                if chunk.get("truncated"):
                    progress.usage["truncated"] = True
            content = chunk.get("content")
            return content if isinstance(content, str) else ""
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason:
            progress.finish_reason = _FINISH_REASONS.get(reason, "stop")
        if dialect == "chat":
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
        else:
            content = choice.get("text")
        return content if isinstance(content, str) else ""

    def _done(self, reason: str, call: _Call, progress: _Progress, error: str | None = None) -> Finish:
        usage, timings = progress.usage, progress.timings
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        cached = usage.get("cached_tokens")
        if cached is None and isinstance(details, dict):
            cached = details.get("cached_tokens")
        return Finish(
            reason,  # type: ignore[arg-type]
            Usage(
                prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else call.prompt_tokens,
                completion_tokens=completion_tokens if isinstance(completion_tokens, int) else progress.completion_tokens,
                cached_tokens=cached if isinstance(cached, int) else 0,
                prompt_ms=float(timings.get("prompt_ms") or 0.0),
                predicted_ms=float(timings.get("predicted_ms") or 0.0),
            ),
            truncated=bool(usage.get("truncated", False)),
            error=error,
        )

    def _raise_for_status(self, replica: Replica, call: _Call, response: httpx.Response) -> None:
        """Caller errors become RouterErrors (no retry); replica trouble becomes _ReplicaFailure."""
        status = response.status_code
        try:
            raw = response.read()[:4000].decode("utf-8", "replace")
        except httpx.HTTPError:
            raw = ""
        message = _error_text(parse_json(raw) or {}) or raw.strip() or response.reason_phrase
        where = f"upstream {replica.url}{call.path}"
        if call.dialect == "infill" and status in (404, 501):
            raise FimNotSupported(f"model {self.model_id!r}: {where} cannot do FIM ({status}: {message})")
        if call.dialect == "embeddings" and status in (404, 405, 501):  # a catalog mistake, not a replica fault
            raise UpstreamUnavailable(f"model {self.model_id!r}: {where} serves no embeddings ({status}: {message}); "
                                      "is its server an embedding model's?")
        if status in (400, 413, 422):
            lowered = message.lower()
            if "context" in lowered and any(w in lowered for w in ("exceed", "length", "long", "size", "fit")):
                raise ContextLengthExceeded(f"model {self.model_id!r}: {message}")
            raise InvalidRequest(f"model {self.model_id!r}: {where} refused the request: {message}")
        if status in (401, 403):
            raise _ReplicaFailure(f"refused our credentials ({status}); check the model's api_key_env")
        raise _ReplicaFailure(f"answered {status}: {message}")

    @staticmethod
    def _describe(exc: httpx.HTTPError, guard: StreamGuard) -> str:
        if guard.reason and guard.reason != CANCELLED:
            return guard.describe()
        if isinstance(exc, httpx.ConnectTimeout):
            return "connect timed out"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect ({exc})"
        if isinstance(exc, httpx.ReadTimeout):
            return "read timed out"
        return f"{type(exc).__name__}: {exc}"

    def _tokenize(self, text: str) -> int | None:
        """llama-server's /tokenize on any healthy replica; None when none answers."""
        for replica in self.replicas.replicas:
            if not replica.healthy:
                continue
            try:
                response = self._client.post(
                    replica.url + "/tokenize",
                    json={"content": text},
                    timeout=self.options.first_token_timeout_s,
                )
                if response.status_code == 200:
                    tokens = response.json().get("tokens")
                    if isinstance(tokens, list):
                        return len(tokens)
            except (httpx.HTTPError, ValueError):
                continue
        return None


def _prompt_text(request: Request) -> tuple[str, int]:
    """The text a request will put in front of the model, and the tokens its framing adds."""
    if request.kind == "chat":
        parts = [m.text for m in request.messages]
        parts += [r.content for m in request.messages for r in m.tool_results]
        return "\n".join(parts), CHAT_TOKENS_PER_MESSAGE * (len(request.messages) + 1)
    if request.kind == "embed":  # each input must fit on its own: the longest text counts
        return max((i for i in request.inputs if isinstance(i, str)), key=len, default=""), 1
    if request.kind == "fim":
        text = "".join([request.prefix, request.prompt, request.suffix, *(f"{f.filename or ''}\n{f.text}" for f in request.extra)])
        return text, 4 + 2 * len(request.extra)
    return request.prompt, 1


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if isinstance(error, str):
        return error
    detail = body.get("detail")
    return str(detail) if detail else ""


def _t_max_predict_cut(text: str, t_max_predict_ms: float | None, first_token_at: float) -> tuple[str, bool]:
    """llama.vim's time budget: once spent, end the generation after the next newline."""
    if t_max_predict_ms is None or (time.perf_counter() - first_token_at) * 1000 < t_max_predict_ms:
        return text, False
    cut = text.find("\n")
    if cut < 0:
        return text, False
    return text[: cut + 1], True


def _chat_delta(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = chunk.get("choices") or []
    delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
    return delta if isinstance(delta, dict) else {}


class _UpstreamCalls:
    """An upstream's streamed `delta.tool_calls` as our call events.

    Calls are numbered 0..n-1 in the order the upstream first names them, whatever its own indexes
    are. Each gets one ToolCallStart: llama-cpp-python's server repeats the id and the name in every
    delta, and a client concatenates name strings, so a repeat must start nothing. Pieces that come
    before a call's name (an id alone, early arguments) wait for it. Upstreams without `index`
    (Ollama before 0.5) are keyed by the call's id; legacy `delta.function_call` is call 0.
    """

    def __init__(self) -> None:
        self._ours: dict[object, int] = {}  # the upstream's key for a call -> our index
        self._waiting: dict[object, tuple[str | None, list[str]]] = {}  # no name yet: (id, argument pieces)
        self._last_key: object = None
        self._saw_tool_calls = False

    @property
    def count(self) -> int:
        return len(self._ours)

    def feed(self, delta: dict[str, Any]) -> list[Event]:
        pieces = delta.get("tool_calls")
        if isinstance(pieces, list):
            self._saw_tool_calls = True
        elif isinstance(delta.get("function_call"), dict) and not self._saw_tool_calls:
            pieces = [{"index": 0, "function": delta["function_call"]}]
        else:
            return []
        out: list[Event] = []
        for piece in pieces:
            if isinstance(piece, dict):
                self._feed_piece(piece, out)
        return out

    def _feed_piece(self, piece: dict[str, Any], out: list[Event]) -> None:
        index, call_id = piece.get("index"), piece.get("id")
        call_id = call_id if isinstance(call_id, str) and call_id else None
        if isinstance(index, int) and not isinstance(index, bool):
            key: object = index
        elif call_id is not None:
            key = ("id", call_id)
        else:
            key = self._last_key if self._last_key is not None else 0
        self._last_key = key
        function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
        arguments = _arguments_text(function.get("arguments"))
        ours = self._ours.get(key)
        if ours is not None:
            if arguments:
                out.append(ToolCallDelta(ours, arguments))
            return
        waiting_id, waiting_args = self._waiting.get(key, (None, []))
        waiting_id = waiting_id or call_id
        if arguments:
            waiting_args.append(arguments)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            self._waiting[key] = (waiting_id, waiting_args)
            return
        self._waiting.pop(key, None)
        ours = self._ours[key] = len(self._ours)
        out.append(ToolCallStart(ours, waiting_id or new_call_id(), name))
        if waiting_args:
            out.append(ToolCallDelta(ours, "".join(waiting_args)))


def _arguments_text(arguments: Any) -> str:
    """A call's arguments piece as JSON text; Ollama-style upstreams send the object whole."""
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    return ""

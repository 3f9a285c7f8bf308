"""The in-process backend: one GGUF model in llama-cpp-python, driven token by token.

It renders and tokenizes every prompt itself (chat template, raw completion, FIM per family)
so it can refuse an over-long prompt before any work, and it runs its own small decode loop
on llama.cpp's sampler chain instead of `create_completion`: less Python per token (this loop
shares two cores with llama.cpp), cancellation checked between tokens, stop strings and
llama.vim's `t_max_predict_ms` honoured, and never llama-cpp-python's broken `suffix` path.
Not thread-safe: the pool gives it exactly one worker thread.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import llama_cpp
from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.backend import BackendOptions
from models.capabilities import Capabilities
from models.catalog import ModelSpec
from models.chat_messages import openai_tools, template_messages
from models.errors import ContextLengthExceeded, FimNotSupported, InvalidRequest, ModelLoadFailed, UnsupportedParameter
from models.events import Event, Finish, TextDelta, ToolCallStart, Usage
from models.fim import FimPrompt, FimTokens, Piece, build_fim_prompt, detect_fim, translate_fim_prompt
from models.gguf_header import diagnose_gguf, kv_cache_bytes
from models.grammar import json_output_grammar
from models.prompt_states import PromptStates, SavedState, common_prefix
from models.prompt_tokenizer import PromptTokenizer
from models.request import Request, SamplingParams, text_message
from models.tool_formats import (
    GENERIC, MISTRAL, MISTRAL_ARGS, ToolFormat, ToolGrammar, detect_tool_format, generic_system_prompt, mistral_ids,
    tool_grammar,
)
from models.tool_parser import ToolCallParser

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A base model without a chat template still gets a readable transcript.
TRANSCRIPT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
TRANSCRIPT_STOPS = ("\nUser:", "\nSystem:")
# FIM prompts that do not fit are trimmed (as llama.cpp's /infill does), keeping room for this
# many new tokens (or max_tokens, if smaller) and the prefix:suffix budget at 3:1.
FIM_RESERVE_TOKENS = 256
# FIM prompts are evaluated in slices this long, so a superseded request stops within one slice
# (each extra slice costs about one decode step: weights are streamed once per llama_decode).
PROMPT_SLICE_TOKENS = 64
# llama.cpp's CPU matrix kernels take a batch's rows in groups of this many; the leftover rows go
# through another kernel that sums in another order. A cached prefix is reused from a multiple of
# it, so a prompt's KV cache (and so greedy output) is bit-identical to evaluating it afresh.
EXACT_ROW_GROUP = 4
# A cache is saved before a prompt overwrites at least this many of its tokens (fewer evaluate
# again in well under a second), and a saved state is restored when it holds at least this many
# more of the new prompt than the cache does.
MIN_SAVED_TOKENS = 256
MIN_RESTORE_GAIN = 256
# Long prefills log their progress at most this often.
PROGRESS_LOG_S = 2.0


# ggml_log_level of the bundled llama.cpp: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
# llama-cpp-python 0.3.16 maps these one step off (WARN printed as ERROR, even with verbose=False).
# WARN lines are about llama.cpp's own setup (e.g. a context smaller than the training one), not
# something a router user acts on, so they go to INFO; real failures surface as exceptions.
GGML_TO_LOGGING = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
native_log = logging.getLogger("llama_cpp.native")
log = logging.getLogger("models.llama_backend")


@functools.cache
def route_llama_logs() -> object:
    """Send llama.cpp's log lines to Python logging, once per process; returns the callback to keep it alive."""

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").rstrip()
        if line:
            native_log.log(GGML_TO_LOGGING.get(level, logging.DEBUG), "%s", line)

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    return forward


class LlamaBackend:
    """A loaded GGUF model implementing the Backend protocol (parallel = 1: one llama.cpp context)."""

    parallel = 1

    def __init__(self, spec: ModelSpec, weights_path: Path | str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        route_llama_logs()
        self.model_id: str = spec.id
        self.weights_path = Path(weights_path)
        started = time.perf_counter()
        n_ctx = spec.n_ctx
        self._llm = open_gguf(spec, self.weights_path, options, n_batch=min(options.n_batch, n_ctx),
                              n_ubatch=min(options.n_ubatch, options.n_batch, n_ctx))
        self.load_ms = (time.perf_counter() - started) * 1000.0
        llm = self._llm
        self.n_ctx: int = llm.n_ctx()
        self._ctx = llm._ctx.ctx
        self._vocab = llm._model.vocab
        self._sample = llama_cpp.llama_sampler_sample
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._decode_fn = llama_cpp.llama_decode
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._special_ids: dict[str, int | None] = {}
        self._add_bos = bool(llm._model.add_bos_token()) and llm.token_bos() >= 0
        self._bos = llm.token_bos()
        self._tokenizer = PromptTokenizer(llm)
        metadata = llm.metadata
        self.architecture: str | None = metadata.get("general.architecture")
        self.fim: FimTokens | None = detect_fim(self._has_token, override=spec.fim_family)
        template = spec.chat_template or metadata.get("tokenizer.chat_template")
        self._chat_stops: tuple[str, ...] = ()
        if not template:
            template = CHATML_TEMPLATE if self._has_token("<|im_start|>") else TRANSCRIPT_TEMPLATE
            self._chat_stops = () if template is CHATML_TEMPLATE else TRANSCRIPT_STOPS
        self.chat_template: str = template
        self._template = _jinja_env().from_string(template)
        self.tool_format: ToolFormat | None = detect_tool_format(template)
        self._bos_text = llm._model.token_get_text(self._bos) if self._bos >= 0 else ""
        self._eos_text = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        self.memory_bytes: int = self.weights_path.stat().st_size + kv_cache_bytes(metadata, self.n_ctx)
        self._prepared: tuple[Request, _Prepared] | None = None
        self._exact_tokens = 0  # leading KV positions that equal a fresh evaluation of them, bit for bit
        self._states: PromptStates | None = options.prompt_states
        self._max_piece_bytes: int | None = None
        self._closed = False

    # ---- Backend protocol ---------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        family = self.fim.family if self.fim is not None else None
        tools = self.tool_format
        return Capabilities(self.n_ctx, fim=self.fim is not None, fim_family=family,
                            fim_stops=self.fim.stops if self.fim is not None else (), tools=tools is not None,
                            tool_format=tools.name if tools else None, architecture=self.architecture)

    def count_prompt_tokens(self, request: Request) -> int:
        return len(self._prepare(request).tokens)

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Evaluate the prompt (reusing the KV cache's common prefix) and stream text, then Finish.

        The pool has checked that the prompt fits (count_prompt_tokens against n_ctx)."""
        if self._closed:
            raise ModelLoadFailed(f"Model {self.model_id!r} was unloaded.", model=self.model_id)
        prep = self._prepare(request)
        self._prepared = None
        return self._run(prep, request, cancel)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._states is not None:
                self._states.drop_model(self.model_id)
            self._llm.close()

    # ---- prompt ---------------------------------------------------------------------------

    def _prepare(self, request: Request) -> _Prepared:
        """Render and tokenize once; the pool's token count and the generation share the result."""
        if self._prepared is not None and self._prepared[0] is request:
            return self._prepared[1]
        prep = self._render(request)
        self._prepared = (request, prep)
        return prep

    def _render(self, request: Request) -> _Prepared:
        if request.kind == "chat":
            tool_format = self._tool_format_for(request)
            text = self._render_chat(request, tool_format)
            self._refuse_surely_too_long(text, request)
            add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
            prep = _Prepared(self._tokenize(text, add_bos=add_bos, special=True), self._chat_stops, frozenset())
            prep.tool_format = tool_format
            if tool_format is not None:
                prep.grammar = tool_grammar(tool_format, request.tools, request.tool_choice,
                                            request.tool_choice.parallel, request.output.schema)
                prep.preserved = {tid: m.encode() for m in tool_format.markers
                                  if (tid := self._token_id(m)) is not None}
            elif request.output.kind != "text":
                prep.grammar = ToolGrammar(json_output_grammar(request.output.schema, "response_format"), lazy=False)
            return prep
        if request.kind == "complete":
            fim = translate_fim_prompt(request.prompt, self.fim, model_id=self.model_id)
            if fim is None:
                self._refuse_surely_too_long(request.prompt, request)
                prep = _Prepared(self._tokenize(request.prompt, add_bos=self._add_bos, special=True), (), frozenset())
                if request.output.kind != "text":
                    prep.grammar = ToolGrammar(json_output_grammar(request.output.schema, "format"), lazy=False)
                return prep
            if request.output.kind != "text":
                raise UnsupportedParameter("A JSON answer cannot shape a fill-in-the-middle prompt.", param="format")
            return self._fim_tokens(fim, request.params, trim=False)
        if request.kind == "fim":
            if self.fim is None:
                raise FimNotSupported(
                    f"Model {self.model_id!r} has no fill-in-the-middle tokens in its vocabulary, so it cannot do "
                    "FIM. Use a FIM-capable coder model (Qwen2.5-Coder, StarCoder2, DeepSeek-Coder, CodeLlama, "
                    "Codestral), or set `fim_family` in the catalog if its tokens are spelled unusually.",
                    model=self.model_id,
                )
            fim = build_fim_prompt(self.fim, request.prefix + request.prompt, request.suffix, request.extra)
            return self._fim_tokens(fim, request.params, trim=True)
        raise InvalidRequest(f"unknown generation kind {request.kind!r}")

    def _tool_format_for(self, request: Request) -> ToolFormat | None:
        """The call syntax this request's tools use here; None when it carries none (or tool_choice none)."""
        if not request.tools or request.tool_choice.mode == "none":
            return None
        if self.tool_format is None:
            raise UnsupportedParameter(
                f"Model {self.model_id!r} cannot call tools: its chat template does not render them. Use a model "
                "whose template does (Qwen2.5/Qwen3, Llama 3.1+, Mistral, Hermes), or set `chat_template` in the catalog.",
                param="tools",
            )
        # Tools beside a JSON answer: llama.cpp's generic form, whose grammar holds both.
        return GENERIC if request.output.kind != "text" else self.tool_format

    def _render_chat(self, request: Request, tool_format: ToolFormat | None) -> str:
        messages = request.messages
        if not messages:
            raise InvalidRequest("a chat request needs at least one message", param="messages")
        tools = None
        if tool_format is GENERIC:
            instruction = generic_system_prompt(request.tools, request.tool_choice, request.output.schema)
            if messages[0].role == "system":
                messages = (text_message("system", messages[0].text + "\n\n" + instruction), *messages[1:])
            else:
                messages = (text_message("system", instruction), *messages)
        elif tool_format is not None:
            tools = openai_tools(request.tools)
        rendered = template_messages(messages, self.model_id)
        if self.tool_format in (MISTRAL, MISTRAL_ARGS):
            rendered = mistral_ids(rendered)
        try:
            return self._template.render(
                messages=rendered,
                add_generation_prompt=True,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
                raise_exception=_raise_template_error,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
                tools=tools,
            )
        except InvalidRequest:
            raise
        except Exception as exc:
            raise InvalidRequest(f"model {self.model_id!r}'s chat template failed on these messages: {exc}",
                                 param="messages") from exc

    def _fim_tokens(self, fim: FimPrompt, params: SamplingParams, *, trim: bool) -> _Prepared:
        stop_ids = frozenset(i for i in (self._token_id(s) for s in fim.stops) if i is not None)
        if not fim.pieces:  # already in this model's own format: the client's text as it is
            return _Prepared(self._tokenize(fim.text, add_bos=self._add_bos, special=True), (), stop_ids)
        runs: list[tuple[Piece, list[int]]] = []
        for piece in fim.pieces:
            tid = self._token_id(piece.text) if piece.special else None
            if tid is not None:
                runs.append((piece, [tid]))
            else:
                runs.append((piece, self._tokenize(piece.text, add_bos=False, special=False)))
        head = [self._bos] if self._add_bos else []
        truncated = False
        if trim:
            reserve = min(params.max_tokens or FIM_RESERVE_TOKENS, FIM_RESERVE_TOKENS, self.n_ctx // 4)
            runs, truncated = _trim_fim(runs, self.n_ctx - reserve - len(head))
        tokens = head + [t for _, ids in runs for t in ids]
        return _Prepared(tokens, (), stop_ids, truncated)

    def _refuse_surely_too_long(self, text: str, request: Request) -> None:
        """Refuse without tokenizing when even the longest token could not pack `text` into n_ctx.

        Why: tokenizing a multi-megabyte prompt takes tens of seconds on the model's only worker.
        """
        if len(text) <= self.n_ctx * 16:  # short enough to tokenize quickly; exact counting decides
            return
        if self._max_piece_bytes is None:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self._max_piece_bytes = max(len(self._piece(t)) for t in range(n_vocab)) or 1
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
        if n_bytes > self.n_ctx * self._max_piece_bytes:
            raise ContextLengthExceeded(
                f"The prompt is {n_bytes} bytes: at least {n_bytes // self._max_piece_bytes} tokens, but model "
                f"{self.model_id!r} has a context of {self.n_ctx} tokens. Shorten the prompt.",
                param=request.prompt_field,
                n_ctx=self.n_ctx,
            )

    # ---- decode loop --------------------------------------------------------------------------

    def _run(self, prep: _Prepared, request: Request, cancel: threading.Event) -> Iterator[Event]:
        started = time.perf_counter()
        cached = self._evaluate_prompt(prep.tokens, request.kind, cancel)
        prompt_ms = (time.perf_counter() - started) * 1000.0
        usage = Usage(prompt_tokens=len(prep.tokens), cached_tokens=cached, prompt_ms=prompt_ms)
        if self._llm.n_tokens < len(prep.tokens):  # cancelled mid-prompt; the evaluated part stays cached
            yield Finish("cancelled", usage, truncated=prep.truncated)
            return
        if request.warmup:
            yield Finish("stop", usage, truncated=prep.truncated)
            return
        yield from self._decode(prep, request, cancel, usage)

    def _evaluate_prompt(self, tokens: list[int], kind: str, cancel: threading.Event) -> int:
        """Bring the KV cache to `tokens`, reusing its common prefix (or a saved state's); returns the tokens reused."""
        llm = self._llm
        try:
            # Editor requests share most of their prompt; at least one token is always evaluated.
            common = self._cached_prefix(tokens)
            common = self._switch_state(tokens, common)
            # Editors supersede their FIM request on every keystroke: a FIM/completion prompt is
            # evaluated in slices, stopping between them once cancelled (bench/burst.py). A chat
            # re-evaluates only what changed, as llama-server does, in n_batch slices: the batches
            # llm.eval would cut anyway, so the same numbers, but an agent's 20k-token prompt stops
            # within one slice when its client goes away instead of holding the model for minutes.
            # Both restart bit-exactly where they can (the same prompt gives the same answer).
            step = llm.n_batch if kind == "chat" else PROMPT_SLICE_TOKENS
            slices, exact = prompt_slices(len(tokens), common, self._exact_tokens, step)
            cached = llm.n_tokens = slices[0][0] if slices else common
            progress = _PrefillProgress(self.model_id, len(tokens), cached)
            for start, end in slices:
                if start > cached and cancel.is_set():
                    break
                llm.eval(tokens[start:end])
                progress.evaluated(end)
        except Exception:
            llm.n_tokens = self._exact_tokens = 0
            raise
        # Without an exact restart, only what lies before the reused prefix stays as exact as it was.
        exact_end = llm.n_tokens if exact else min(self._exact_tokens, cached)
        self._exact_tokens = exact_end - exact_end % EXACT_ROW_GROUP
        return cached

    def _cached_prefix(self, tokens: list[int]) -> int:
        """Leading tokens of `tokens` the KV cache holds now (at most all but the last)."""
        limit = min(self._llm.n_tokens, len(tokens) - 1)
        return common_prefix(self._llm.input_ids[:limit], tokens[:limit]) if limit > 0 else 0

    def _switch_state(self, tokens: list[int], common: int) -> int:
        """Save the cache before this prompt overwrites much of it, and restore the saved state that
        shares more of this prompt than the cache does; returns the tokens now reusable."""
        states = self._states
        if states is None:
            return common
        llm = self._llm
        state, shared = states.best(self.model_id, tokens)
        shared = min(shared, len(tokens) - 1)
        restore = state is not None and shared >= common + MIN_RESTORE_GAIN
        if llm.n_tokens - common >= MIN_SAVED_TOKENS:
            self._save_state(states)
        if not restore:
            return common
        assert state is not None
        if not self._restore_state(state):
            states.drop(state)
            return 0
        states.restored()
        return shared

    def _save_state(self, states: PromptStates) -> None:
        """Copy the context's KV cells (sequence 0, no logits) into the saved states."""
        llm = self._llm
        n = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        if n <= 0 or n > states.limit_bytes:
            return
        data = bytearray(n)
        written = llama_cpp.llama_state_seq_get_data(self._ctx, (ctypes.c_uint8 * n).from_buffer(data), n, 0)
        if written != n:
            return
        state = SavedState(self.model_id, llm.input_ids[:llm.n_tokens].copy(), data,
                           min(self._exact_tokens, llm.n_tokens))
        states.save(state)

    def _restore_state(self, state: SavedState) -> bool:
        """Make the context hold `state`; False (the cache emptied) when llama.cpp cannot read it."""
        llm = self._llm
        memory = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        n = state.n_bytes
        read = llama_cpp.llama_state_seq_set_data(self._ctx, (ctypes.c_uint8 * n).from_buffer(state.data), n, 0)
        if read != n:
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
            llm.n_tokens = self._exact_tokens = 0
            log.warning("model %s: a saved prompt state could not be restored; evaluating afresh", self.model_id)
            return False
        llm.input_ids[:len(state.tokens)] = state.tokens
        llm.n_tokens = len(state.tokens)
        self._exact_tokens = state.exact_tokens
        return True

    def _decode(self, prep: _Prepared, request: Request, cancel: threading.Event, usage: Usage) -> Iterator[Event]:
        """Sample and evaluate one token at a time until a stop, the limit or a cancel; then Finish."""
        llm = self._llm
        params = request.params
        gen_start = time.perf_counter()
        sampler = _make_sampler(params, llm.n_vocab())
        grammar = None
        if prep.grammar is not None:
            try:
                grammar = _GrammarCheck(self._grammar_sampler(prep.grammar), sampler, self._ctx, llm.n_vocab())
            except Exception:
                sampler.close()
                raise
        parser = None
        if prep.tool_format is not None:
            parser = ToolCallParser(prep.tool_format, request.tools, buffer_calls=not request.stream)
        preserved = prep.preserved
        ctx, vocab, sample, is_eog = self._ctx, self._vocab, self._sample, self._is_eog
        stop_ids = prep.stop_ids
        n_ctx = self.n_ctx
        max_new = params.max_tokens if params.max_tokens is not None else n_ctx
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = tuple(s for s in params.stop if s) + prep.stop_strings
        matcher = _StopMatcher(stops) if stops else None
        deadline = gen_start + params.t_max_predict_ms / 1000.0 if params.t_max_predict_ms else None
        seen_newline = False
        n_new = 0
        finish = "length"
        try:
            while True:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if n_new >= max_new or llm.n_tokens >= n_ctx:
                    finish = "length"
                    break
                tok = sample(sampler.sampler, ctx, -1)
                if grammar is not None:
                    tok = grammar.allowed(tok)
                if tok in stop_ids or is_eog(vocab, tok):
                    finish = "stop"
                    break
                n_new += 1
                piece = preserved.get(tok) if preserved else None
                if piece is None:
                    piece = self._pieces.get(tok)
                if piece is None:
                    piece = self._piece(tok)
                text = decoder.decode(piece)
                stop_now = False
                if text:
                    if matcher is not None:
                        text, stop_now = matcher.feed(text)
                    if deadline is not None:
                        seen_newline = seen_newline or "\n" in text
                        if seen_newline and time.perf_counter() > deadline:
                            stop_now, finish = True, "length"
                    if text:
                        if parser is None:
                            yield TextDelta(text)
                        else:
                            yield from parser.feed(text)
                    if stop_now:
                        finish = "stop" if matcher is not None and matcher.stopped else finish
                        break
                self._append(tok)
        except Exception:
            llm.n_tokens = self._exact_tokens = 0  # the KV cache may no longer match input_ids
            raise
        finally:
            sampler.close()
            if grammar is not None:
                grammar.close()
        tail = decoder.decode(b"", final=True)
        if matcher is not None and not matcher.stopped:
            tail = matcher.flush(tail)  # text held back as a possible stop's start is output after all
        if tail and finish != "cancelled":
            if parser is None:
                yield TextDelta(tail)
            else:
                yield from parser.feed(tail)
        if parser is not None and finish != "cancelled":
            yield from parser.finish()
            if parser.n_calls and finish == "stop":
                finish = "tool_calls"
        predicted_ms = (time.perf_counter() - gen_start) * 1000.0
        usage = dataclasses.replace(usage, completion_tokens=n_new, predicted_ms=predicted_ms)
        matched = matcher.matched if matcher is not None and matcher.matched in params.stop else None
        yield Finish(finish, usage, truncated=prep.truncated, stop_sequence=matched)  # type: ignore[arg-type]

    def _grammar_sampler(self, grammar: ToolGrammar) -> Any:
        """llama.cpp's grammar sampler: lazy (free text until the trigger) or constraining from the first token."""
        gbnf, root = grammar.gbnf.encode(), b"root"
        if grammar.lazy and grammar.trigger:
            tid = self._token_id(grammar.trigger)
            tokens = (llama_cpp.llama_token * 1)(tid) if tid is not None else (llama_cpp.llama_token * 0)()
            # Spelled in several tokens: a pattern over the text so far; its group marks where the call starts.
            patterns = [] if tid is not None else [rf"[\s\S]*?({_ecma_escape(grammar.trigger)})[\s\S]*".encode()]
            arr = (ctypes.c_char_p * len(patterns))(*patterns)
            handle = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, gbnf, root, arr, len(patterns), tokens, len(tokens))
        else:
            handle = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf, root)
        if not handle:
            raise InvalidRequest("the grammar built for this request did not parse in llama.cpp", param="tools")
        return handle

    def _append(self, tok: int) -> None:
        """Evaluate one sampled token: one llama_decode of a one-token batch."""
        llm = self._llm
        batch = llm._batch.batch
        pos = llm.n_tokens
        batch.n_tokens = 1
        batch.token[0] = tok
        batch.pos[0] = pos
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = True
        if self._decode_fn(self._ctx, batch) != 0:
            raise RuntimeError(f"llama_decode failed at position {pos}")
        llm.input_ids[pos] = tok
        llm.n_tokens = pos + 1

    # ---- vocabulary -----------------------------------------------------------------------------

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        return self._tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def _token_id(self, text: str) -> int | None:
        """The id of the single token spelled exactly `text` in the vocabulary, if there is one."""
        if text not in self._special_ids:
            ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            tid = ids[0] if len(ids) == 1 and self._llm._model.token_get_text(ids[0]) == text else None
            self._special_ids[text] = tid
        return self._special_ids[text]

    def _has_token(self, text: str) -> bool:
        return self._token_id(text) is not None

    def _piece(self, tok: int) -> bytes:
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
        piece = buf.raw[:n]
        self._pieces[tok] = piece
        return piece


def prompt_slices(n_prompt: int, common: int, exact_tokens: int, step: int) -> tuple[list[tuple[int, int]], bool]:
    """The [start, end) batches that evaluate a prompt whose first `common` tokens are in the KV
    cache, and whether the result is bit-identical to evaluating the prompt afresh.

    It restarts at a row group (EXACT_ROW_GROUP) inside the part the cache holds exactly, which
    costs a few tokens; a prompt that goes on into generated tokens (a chat's next turn) reuses
    them as they are instead, since evaluating them again costs seconds. No batch after the
    first is one row alone: llama.cpp sums a lone row differently again.
    """
    group = EXACT_ROW_GROUP
    start = min(common - common % group, exact_tokens)
    if n_prompt - start == 1:
        start = max(0, start - group)
    exact = common - start <= 2 * group
    if not exact:
        start = common
    bounds = [*range(start, n_prompt, max(1, step)), n_prompt]
    if exact and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= group
    return list(zip(bounds, bounds[1:])), exact


class _Prepared:
    """A rendered, tokenized prompt, what ends its generation, and what shapes it (grammar, tool calls)."""

    __slots__ = ("tokens", "stop_strings", "stop_ids", "truncated", "grammar", "tool_format", "preserved")

    def __init__(self, tokens: list[int], stop_strings: tuple[str, ...], stop_ids: frozenset[int],
                 truncated: bool = False) -> None:
        self.tokens = tokens
        self.stop_strings = stop_strings
        self.stop_ids = stop_ids
        self.truncated = truncated
        self.grammar: ToolGrammar | None = None
        self.tool_format: ToolFormat | None = None
        self.preserved: dict[int, bytes] = {}  # marker tokens printed as text (llama.cpp's preserved tokens)


class _PrefillProgress:
    """Logs a long prompt's evaluation (tokens done of the total) every PROGRESS_LOG_S, and its end."""

    def __init__(self, model_id: str, total: int, reused: int) -> None:
        self.model_id, self.total, self.reused = model_id, total, reused
        self.started = self.logged = time.perf_counter()
        self.reported = False

    def evaluated(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.logged < PROGRESS_LOG_S and not (self.reported and done == self.total):
            return
        self.logged, self.reported = now, True
        rate = (done - self.reused) / max(now - self.started, 1e-9)
        log.info("model %s: prompt %d/%d tokens (%d reused, %.0f tokens/s)", self.model_id, done, self.total,
                 self.reused, rate)


class _StopMatcher:
    """Finds stop strings across token boundaries, holding back only text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string found

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self.held + text
        cut = -1
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut, self.matched = i, s
        if cut >= 0:
            self.held = ""
            self.stopped = True
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return (buf[: len(buf) - keep] if keep else buf), False

    def flush(self, tail: str) -> str:
        out, _ = self.feed(tail)
        if self.stopped:
            return out
        out, self.held = out + self.held, ""
        return out


def _trim_fim(runs: list[tuple[Piece, list[int]]], budget: int) -> tuple[list[tuple[Piece, list[int]]], bool]:
    """Fit a FIM prompt in `budget` tokens: drop repo context first, then cut the prefix's head
    and the suffix's tail, keeping the prefix:suffix split at 3:1 (llama.cpp's choice)."""
    total = sum(len(ids) for _, ids in runs)
    if total <= budget:
        return runs, False
    runs = [(p, ids) for p, ids in runs if p.role != "extra"]
    total = sum(len(ids) for _, ids in runs)
    if total <= budget:
        return runs, True
    fixed = sum(len(ids) for p, ids in runs if p.role not in ("prefix", "suffix"))
    room = max(0, budget - fixed)
    n_pre = sum(len(ids) for p, ids in runs if p.role == "prefix")
    n_suf = sum(len(ids) for p, ids in runs if p.role == "suffix")
    take_suf = min(n_suf, max(room // 4, room - n_pre))
    take_pre = min(n_pre, room - take_suf)
    out = []
    for p, ids in runs:
        if p.role == "prefix":
            ids = ids[len(ids) - take_pre:] if take_pre else []
        elif p.role == "suffix":
            ids = ids[:take_suf]
        out.append((p, ids))
    return out, True


def open_gguf(spec: ModelSpec, weights_path: Path, options: BackendOptions, **kwargs: Any) -> llama_cpp.Llama:
    """`weights_path` loaded by llama-cpp-python with the spec's context and the options' threads;
    ModelLoadFailed says why when it cannot (llama.cpp itself only says "failed to load")."""
    if not weights_path.is_file():
        raise ModelLoadFailed(f"Model {spec.id!r} cannot load: its GGUF file {weights_path} does not exist.",
                              model=spec.id)
    try:
        return llama_cpp.Llama(str(weights_path), n_ctx=spec.n_ctx, n_gpu_layers=spec.n_gpu_layers,
                               n_threads=options.n_threads, n_threads_batch=options.n_threads_batch,
                               use_mmap=options.use_mmap, verbose=False, **kwargs)
    except Exception as exc:
        defuse_half_built(exc)
        cause = diagnose_gguf(weights_path) or f"llama.cpp refused it ({exc})"
        raise ModelLoadFailed(f"Model {spec.id!r} failed to load from {weights_path}: {cause}", model=spec.id) from exc


def defuse_half_built(exc: BaseException) -> None:
    """llama-cpp-python 0.3.16's LlamaModel.__del__ raises on an object whose load failed (no
    `sampler` attribute yet); give it the attribute so its cleanup runs quietly."""
    from llama_cpp._internals import LlamaModel

    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, LlamaModel) and not hasattr(obj, "sampler"):
            obj.sampler = None
        tb = tb.tb_next


class _GrammarCheck:
    """A grammar that checks the sampled token instead of filtering the whole vocabulary first.

    As llama.cpp's common_sampler does: the chain samples freely, the grammar judges that one
    token, and only when it refuses is the whole vocabulary filtered and sampled again. Filtering
    150k candidates per token doubled a 0.5B model's decode time; the check costs microseconds.
    """

    def __init__(self, grammar: Any, chain: Any, ctx: Any, n_vocab: int) -> None:
        import numpy as np

        self.grammar, self.chain, self.ctx, self.n_vocab = grammar, chain, ctx, n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        self._all = (llama_cpp.llama_token_data * n_vocab)()
        self._all_np = np.ctypeslib.as_array(self._all)
        self._ids = np.arange(n_vocab, dtype=np.int32)

    def allowed(self, tok: int) -> int:
        """`tok` if the grammar allows it, else a token sampled among those it allows; the grammar advances."""
        one = self._one[0]
        one.id, one.logit, one.p = tok, 0.0, 0.0
        arr = self._one_arr
        arr.size, arr.selected, arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if one.logit == float("-inf"):
            tok = self._resample()
        llama_cpp.llama_sampler_accept(self.grammar, tok)
        return tok

    def _resample(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        cand = self._all_np
        cand["id"], cand["logit"], cand["p"] = self._ids, logits, 0.0
        arr = llama_cpp.llama_token_data_array(self._all, self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(arr))
        return int(self._all[arr.selected].id)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.grammar)


def _make_sampler(params: SamplingParams, n_vocab: int) -> Any:
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    if params.logit_bias:
        sampler.add_logit_bias(n_vocab, {int(k): float(v) for k, v in params.logit_bias.items()})
    if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        sampler.add_penalties(64, params.repeat_penalty, params.frequency_penalty, params.presence_penalty)
    if params.temperature <= 0.0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(params.top_k)
    sampler.add_typical(params.typical_p, 1)
    sampler.add_top_p(params.top_p, 1)
    sampler.add_min_p(params.min_p, 1)
    sampler.add_temp(params.temperature)
    seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
    sampler.add_dist(seed & 0xFFFFFFFF)
    return sampler


def _ecma_escape(text: str) -> str:
    """`text` as a literal in an ECMAScript regex (llama.cpp's std::regex)."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}/" else c for c in text)


def _raise_template_error(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}", param="messages")


def _jinja_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """`tojson` as Hugging Face transformers and llama.cpp's minja define it for chat templates.

    Jinja's own sorts keys and escapes `'`, `<`, `>`, `&` for HTML, so an earlier turn's tool call
    re-rendered unlike what the model wrote (`{"file_path": ..., "content": "print('hi')"}` came
    back as `{"content": "print(\u0027hi\u0027)", "file_path": ...}`), and the next turn lost
    its KV cache from that call on.
    """
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

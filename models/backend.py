"""What a backend is: the one small interface between the pool and a model that generates tokens.

The in-process llama.cpp backend (models/llama_backend.py) and the OpenAI-compatible upstream
backend (models/upstream_backend.py) both implement it. A generation is always a stream of
events; non-streaming callers simply collect it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, runtime_checkable

Kind = Literal["chat", "complete", "fim"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every dialect (each adapter maps its own names onto these)."""

    max_tokens: int | None = None  # None: until end of generation or the context is full
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] | None = None
    # llama.vim / llama.vscode: after this many ms of decoding, stop at the next newline.
    t_max_predict_ms: float | None = None


@dataclass(frozen=True)
class FimFile:
    """One repo-context chunk (llama.cpp `input_extra`): rendered as a `<|file_sep|>` block where the family has one."""

    text: str
    filename: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation in the internal form every dialect is translated into.

    kind == "chat":     messages
    kind == "complete": prompt (raw text; may already hold another family's FIM tokens, which
                        the backend rewrites into its own)
    kind == "fim":      prefix, suffix, extra (and prompt appended to the prefix, llama.cpp style)
    """

    kind: Kind
    params: SamplingParams = field(default_factory=SamplingParams)
    messages: tuple[dict, ...] = ()
    prompt: str = ""
    prefix: str = ""
    suffix: str = ""
    extra: tuple[FimFile, ...] = ()
    warmup: bool = False  # llama.cpp `n_predict: 0`: evaluate the prompt, generate nothing


@dataclass(frozen=True)
class Token:
    """A piece of generated text (already detokenized, UTF-8 complete)."""

    text: str


@dataclass(frozen=True)
class Done:
    """The last event of every generation: why it ended and what it cost."""

    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    load_ms: float = 0.0
    truncated: bool = False
    error: str | None = None  # set with finish_reason == "error" (mid-stream failure)


Event = Token | Done


@runtime_checkable
class Backend(Protocol):
    """A loaded model. Not thread-safe: the pool gives each backend exactly one worker thread."""

    model_id: str
    n_ctx: int
    parallel: int  # generations it can run at once: 1 for a llama.cpp context, more for an upstream

    @property
    def supports_fim(self) -> bool: ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Tokens the rendered prompt takes; the pool refuses requests that do not fit n_ctx."""
        ...

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        """Stream Token events then exactly one Done. Checks `cancel` between tokens."""
        ...

    def close(self) -> None:
        """Free the model's memory; the backend is unusable afterwards."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """Machine-level knobs a backend is created with (from router Settings, passed down by the pool)."""

    n_threads: int = 2
    n_threads_batch: int = 2
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 120.0
    idle_stream_timeout_s: float = 60.0
    # Off by default: a memory-mapped GGUF that is truncated or rewritten while loaded kills the
    # whole process with SIGBUS; reading it into memory costs a slower cold load instead.
    use_mmap: bool = False

"""What a backend is: the one small interface between the pool and a model that generates tokens.

The in-process llama.cpp backend (models/llama_backend.py) and the OpenAI-compatible upstream
backend (models/upstream_backend.py) both implement it. A generation is always a stream of
events; non-streaming callers simply collect it.
"""

from __future__ import annotations

import threading
import os
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

from models.capabilities import Capabilities
from models.events import Event
from models.prompt_states import PromptStates
from models.request import Request


def default_threads() -> int:
    """Every core: llama.cpp's own default (half) leaves a 2-core machine at one thread (DESIGN.md)."""
    return os.cpu_count() or 1


@runtime_checkable
class Backend(Protocol):
    """A loaded model. Not thread-safe: the pool gives each backend exactly one worker thread."""

    model_id: str
    n_ctx: int
    parallel: int  # generations it can run at once: 1 for a llama.cpp context, more for an upstream
    memory_bytes: int  # what it holds in this process (weights + KV cache), counted against the budget
    chat_template: str  # the Jinja template it renders chats with ("" where the far end renders them)

    @property
    def capabilities(self) -> Capabilities:
        """What the loaded model can do (FIM, tools, context): the pool records it at load."""
        ...

    def count_prompt_tokens(self, request: Request) -> int:
        """Tokens the rendered prompt takes; the pool refuses requests that do not fit n_ctx."""
        ...

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Stream events then exactly one Finish. Checks `cancel` between tokens."""
        ...

    def close(self) -> None:
        """Free the model's memory; the backend is unusable afterwards."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """Machine-level knobs a backend is created with (from router Settings, passed down by the pool)."""

    n_threads: int = field(default_factory=default_threads)
    n_threads_batch: int = field(default_factory=default_threads)
    # Prompt tokens per llama_decode call (n_batch) and per compute graph (n_ubatch); see
    # bench/prefill.py for the figures behind the defaults.
    n_batch: int = 512
    n_ubatch: int = 512
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 120.0
    idle_stream_timeout_s: float = 60.0
    # Off by default: a memory-mapped GGUF that is truncated or rewritten while loaded kills the
    # whole process with SIGBUS; reading it into memory costs a slower cold load instead.
    use_mmap: bool = False
    # Where in-process backends save a context's KV cache before another prompt overwrites it
    # (the pool's, under its memory budget); None: no saving, one cache per model.
    prompt_states: PromptStates | None = field(default=None, compare=False)

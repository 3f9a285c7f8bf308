"""Saved KV-cache states, so a session survives other clients using its model in between.

A llama.cpp context holds one prompt's KV cache. When an editor's FIM request or a second chat
comes to a model between an agent's turns, evaluating it overwrites the agent's 20k-token
cache, and the agent's next turn would evaluate everything again (minutes on a laptop CPU).
So before a backend evaluates a prompt that throws away much of its cache, it saves that cache
here (llama.cpp's per-sequence state: KV cells only, no logits), keyed by its tokens; and
before evaluating, it restores the saved state that shares the longest prefix with the new
prompt, when that beats what its cache already holds. Matching is by token prefix only, so it
works for any client, with or without a session id (as llama-server's slots with
`--cache-reuse` and Ollama's runner cache do).

The states share the pool's memory budget with the loaded models: the pool sets `limit_bytes`
to what the models leave, and the least recently used states go first; a model's load evicts
saved states before it evicts any model. A state is dropped, never served, when it does not
fit, when llama.cpp refuses to read it back, or when its model is unloaded.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class SavedState:
    """One saved KV cache: the tokens it holds, its bytes, and how many leading tokens are bit-exact."""

    model_id: str
    tokens: np.ndarray  # the token ids, as llama-cpp-python's input_ids holds them
    data: bytearray
    exact_tokens: int  # leading positions equal to a fresh evaluation of them (models/llama_backend.py)

    @property
    def n_bytes(self) -> int:
        return len(self.data)


@dataclass
class StateCounters:
    """Monotonic counts for /metrics."""

    saved: int = 0
    restored: int = 0
    evicted: int = 0
    dropped: int = 0  # too large for the budget, or unreadable on restore


@dataclass
class PromptStates:
    """An LRU of SavedState under a byte limit; thread-safe (every model's worker uses it)."""

    limit_bytes: int = 0
    counters: StateCounters = field(default_factory=StateCounters)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._states: collections.OrderedDict[int, SavedState] = collections.OrderedDict()  # oldest first
        self._bytes = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def set_limit(self, limit_bytes: int) -> None:
        """Shrink or grow the room states may take; evicts the least recently used to fit."""
        with self._lock:
            self.limit_bytes = max(0, int(limit_bytes))
            self._evict_locked(0)

    def holds(self, state: SavedState) -> bool:
        with self._lock:
            return id(state) in self._states

    def save(self, state: SavedState) -> bool:
        """Keep `state` (most recently used), dropping the states it makes useless; False if it cannot fit."""
        with self._lock:
            if state.n_bytes > self.limit_bytes:
                self.counters.dropped += 1
                return False
            for key, old in list(self._states.items()):
                if old.model_id == state.model_id and _is_prefix(old.tokens, state.tokens):
                    self._remove_locked(key)  # anything it would serve, `state` serves as well
            self._evict_locked(state.n_bytes)
            self._states[id(state)] = state
            self._bytes += state.n_bytes
            self.counters.saved += 1
            return True

    def best(self, model_id: str, tokens: Sequence[int]) -> tuple[SavedState | None, int]:
        """The saved state of `model_id` sharing the longest prefix with `tokens`, and that length."""
        tokens = np.asarray(tokens)
        with self._lock:
            found, length = None, 0
            for state in self._states.values():
                if state.model_id != model_id:
                    continue
                n = common_prefix(state.tokens, tokens)
                if n > length:
                    found, length = state, n
            if found is not None:
                self._states.move_to_end(id(found))
            return found, length

    def restored(self) -> None:
        with self._lock:
            self.counters.restored += 1

    def drop(self, state: SavedState) -> None:
        """Forget a state llama.cpp would not read back."""
        with self._lock:
            if id(state) in self._states:
                self._remove_locked(id(state))
                self.counters.dropped += 1

    def drop_model(self, model_id: str) -> None:
        """Forget an unloaded model's states: they only fit the context they came from."""
        with self._lock:
            for key in [k for k, s in self._states.items() if s.model_id == model_id]:
                self._remove_locked(key)

    def _evict_locked(self, room: int) -> None:
        while self._states and self._bytes + room > self.limit_bytes:
            self._remove_locked(next(iter(self._states)))
            self.counters.evicted += 1

    def _remove_locked(self, key: int) -> None:
        self._bytes -= self._states.pop(key).n_bytes


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading tokens `a` and `b` share (vectorised: agents' prompts share tens of thousands)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def _is_prefix(short: np.ndarray, long: np.ndarray) -> bool:
    return len(short) <= len(long) and common_prefix(short, long) == len(short)

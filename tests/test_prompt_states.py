"""Saved prompt states on a real tiny GGUF: a session's KV cache survives another prompt on its
model, is restored by prefix, gives the same greedy output, and lives within the memory budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from models.backend import BackendOptions
from models.catalog import Catalog, LocalSource, ModelSpec
from models.events import Finish, TextDelta
from models.llama_backend import EXACT_ROW_GROUP, MIN_SAVED_TOKENS, LlamaBackend
from models.pool import Pool
from models.prompt_states import PromptStates, SavedState, common_prefix
from models.request import Request, SamplingParams, text_message

N_CTX = 4096


def spec(path, model_id="tiny") -> ModelSpec:
    return ModelSpec(id=model_id, labels=["chat"], source=LocalSource(path=path), n_ctx=N_CTX)


def chat(content: str, max_tokens: int = 8) -> Request:
    return Request("chat", messages=(text_message("user", content),),
                   params=SamplingParams(max_tokens=max_tokens, temperature=0.0))


def fim(prefix: str) -> Request:
    return Request("fim", prefix=prefix, suffix="\nreturn x\n", params=SamplingParams(max_tokens=8, temperature=0.0))


def run(backend: LlamaBackend, request: Request) -> tuple[str, Finish]:
    events = list(backend.generate(request, threading.Event()))
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]


SESSION = chat("the agent's long system prompt and first turn " * 60)
OTHER = chat("an unrelated chat from another client " * 30)


@pytest.fixture
def states() -> PromptStates:
    return PromptStates(limit_bytes=1 << 30)


@pytest.fixture
def backend(tiny_gguf, states):
    b = LlamaBackend(spec(tiny_gguf), tiny_gguf, BackendOptions(n_threads=1, n_threads_batch=1, prompt_states=states))
    yield b
    b.close()


def state(tokens, n_bytes: int, model_id: str = "m") -> SavedState:
    return SavedState(model_id, np.array(tokens), bytearray(n_bytes), 0)


# --------------------------------------------------------------------------- bookkeeping


def test_the_longest_shared_prefix_wins_and_only_within_its_model():
    states = PromptStates(limit_bytes=1000)
    short, long_ = state([1, 2, 3, 9], 10), state([1, 2, 3, 4, 5, 8], 10)
    states.save(short)
    states.save(long_)
    states.save(state([1, 2, 3, 4, 5, 6, 7], 10, model_id="other"))
    assert states.best("m", [1, 2, 3, 4, 5, 6]) == (long_, 5)
    assert states.best("m", [1, 2, 3, 9, 9]) == (short, 4)
    assert states.best("m", [7, 7]) == (None, 0)
    states.drop_model("m")
    assert len(states) == 1 and states.best("m", [1, 2, 3]) == (None, 0)


def test_a_state_that_extends_another_replaces_it():
    states = PromptStates(limit_bytes=1000)
    states.save(state([1, 2, 3], 100))
    longer = state([1, 2, 3, 4, 5], 120)
    states.save(longer)
    assert len(states) == 1 and states.used_bytes == 120 and states.holds(longer)


def test_least_recently_used_states_go_first_and_oversized_ones_are_never_kept():
    states = PromptStates(limit_bytes=300)
    a, b, c = state([1], 100), state([2], 100), state([3], 100)
    for s in (a, b, c):
        states.save(s)
    states.best("m", [1, 0])  # a is used: b is now the oldest
    states.save(state([4], 100))
    assert states.holds(a) and not states.holds(b) and states.used_bytes == 300
    assert not states.save(state([5], 301)) and states.counters.dropped == 1
    states.set_limit(150)  # the models took more of the budget
    assert states.used_bytes <= 150 and states.counters.evicted == 3


def test_common_prefix_counts_to_the_first_difference():
    a = tuple(range(5000))
    assert common_prefix(a, a) == 5000
    assert common_prefix(a, a[:3000] + (-1,) + a[3001:]) == 3000
    assert common_prefix(a, ()) == 0


# --------------------------------------------------------------------------- a real context


def test_a_session_survives_another_prompt_and_answers_the_same(backend, states, tiny_gguf):
    alone = LlamaBackend(spec(tiny_gguf), tiny_gguf, BackendOptions(n_threads=1, n_threads_batch=1))
    try:
        text_alone, _ = run(alone, SESSION)
    finally:
        alone.close()
    text1, done1 = run(backend, SESSION)
    assert done1.usage.cached_tokens == 0 and text1 == text_alone
    run(backend, OTHER)  # overwrites the context: the session's cache is saved first
    assert len(states) == 1 and states.counters.saved == 1
    text2, done2 = run(backend, SESSION)
    # Restored, not evaluated again (but a row group, so that the answer is a fresh evaluation's).
    assert done2.usage.prompt_tokens - done2.usage.cached_tokens <= 2 * EXACT_ROW_GROUP
    assert states.counters.restored == 1 and text2 == text_alone
    run(backend, OTHER)  # and the other client's cache was saved in turn: it comes back too
    assert states.counters.restored == 2


def test_a_short_interruption_is_not_worth_saving(backend, states):
    run(backend, chat("x" * (MIN_SAVED_TOKENS // 4)))
    run(backend, OTHER)
    assert len(states) == 0


def test_fim_restored_from_a_saved_state_is_bit_exact_with_a_fresh_evaluation(backend, states, tiny_gguf):
    """An editor's FIM context comes back after a chat took the model: the suggestion is the one a
    fresh evaluation gives (the property FIM has always kept)."""
    prefix = "def compute(values):\n    total = 0\n" * 40
    edited = prefix + "    for v in values:\n        "
    fresh = LlamaBackend(spec(tiny_gguf), tiny_gguf, BackendOptions(n_threads=1, n_threads_batch=1))
    try:
        expected, _ = run(fresh, fim(edited))
    finally:
        fresh.close()
    run(backend, fim(prefix))
    run(backend, OTHER)
    got, done = run(backend, fim(edited))
    assert states.counters.restored == 1 and done.usage.cached_tokens > MIN_SAVED_TOKENS
    assert got == expected


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_saved_state_is_dropped_and_never_served(backend, states, tiny_gguf, damage):
    fresh = LlamaBackend(spec(tiny_gguf), tiny_gguf, BackendOptions(n_threads=1, n_threads_batch=1))
    try:
        expected, _ = run(fresh, SESSION)
    finally:
        fresh.close()
    run(backend, SESSION)
    run(backend, OTHER)
    (saved,) = [s for s in states._states.values() if list(s.tokens[:10]) == backend._prepare(SESSION).tokens[:10]]
    if damage == "truncated":
        del saved.data[len(saved.data) // 2:]
    else:
        saved.data[:64] = b"\xff" * 64
    states._bytes = sum(s.n_bytes for s in states._states.values())
    text, done = run(backend, SESSION)
    assert not states.holds(saved) and states.counters.dropped == 1 and states.counters.restored == 0
    assert done.usage.cached_tokens == 0 and text == expected


# --------------------------------------------------------------------------- the pool's budget


def test_saved_states_share_the_pool_budget_and_go_before_any_model(tiny_gguf, tmp_path):
    from tiny_gguf import write_tiny_gguf

    second = write_tiny_gguf(tmp_path / "second.gguf", seed=1)
    catalog = Catalog(models=[spec(tiny_gguf, "a"), spec(second, "b")])
    probe = LlamaBackend(spec(tiny_gguf), tiny_gguf, BackendOptions(n_threads=1, n_threads_batch=1))
    model_bytes = probe.memory_bytes
    probe.close()
    budget = 2 * model_bytes + 4 * 2**20  # both models fit, plus 4 MiB of states
    with Pool(catalog, memory_budget_bytes=budget, options=BackendOptions(n_threads=1, n_threads_batch=1)) as pool:
        for request in (SESSION, OTHER):
            pool.submit("a", request).collect()
        states = pool.prompt_states
        assert len(states) == 1 and 0 < states.used_bytes <= states.limit_bytes == budget - model_bytes
        pool.submit("b", OTHER).collect()  # the second model loads beside the first: states shrink to fit
        assert states.limit_bytes == budget - pool.used_bytes and states.used_bytes <= states.limit_bytes
        assert [s.loaded for s in pool.status()] == [True, True]
        pool.unload("a")
        assert all(s.model_id != "a" for s in states._states.values())

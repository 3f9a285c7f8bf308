"""LlamaBackend on a real tiny GGUF in real llama-cpp-python: prompts, sampling, stops, cancel, errors.

The tiny model's text is gibberish, so tests steer it with logit_bias (a real llama.cpp
sampler) to get known tokens, and assert structure: events, counts, finish reasons.
"""

from __future__ import annotations

import threading

import pytest
from tiny_gguf import write_tiny_gguf

from models.backend import BackendOptions
from models.events import Finish, TextDelta
from models.request import Request, SamplingParams, text_message
from models.catalog import LocalSource, ModelSpec
from models.errors import ContextLengthExceeded, ModelLoadFailed
from models.llama_backend import EXACT_ROW_GROUP, LlamaBackend, prompt_slices

OPTS = BackendOptions(n_threads=1, n_threads_batch=1)
BYTE0 = 3  # the tiny vocabulary: <unk> <s> </s>, then <0x00>..<0xFF>


def byte_token(b: int) -> int:
    return BYTE0 + b


def spec_for(path, **kw) -> ModelSpec:
    return ModelSpec(id=kw.pop("id", "tiny"), labels=["chat"], source=LocalSource(path=path), n_ctx=kw.pop("n_ctx", 512), **kw)


@pytest.fixture(scope="module")
def backend(tiny_gguf):
    b = LlamaBackend(spec_for(tiny_gguf), tiny_gguf, OPTS)
    yield b
    b.close()


def run(backend, request) -> tuple[list[TextDelta], Finish]:
    events = list(backend.generate(request, threading.Event()))
    assert isinstance(events[-1], Finish) and all(isinstance(e, TextDelta) for e in events[:-1])
    return events[:-1], events[-1]


def forced(byte: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, logit_bias={byte_token(byte): 100.0}, **kw)


def chat(content="hello", **params) -> Request:
    return Request("chat", messages=(text_message("user", content),), params=SamplingParams(**params))


def test_chat_uses_the_gguf_template_and_reports_counts(backend):
    tokens, done = run(backend, chat(max_tokens=6, seed=3))
    assert done.reason in ("stop", "length")
    assert done.usage.completion_tokens == len(tokens) or done.usage.completion_tokens >= len(tokens)
    assert done.usage.prompt_tokens == backend.count_prompt_tokens(chat())
    im_start = backend._token_id("<|im_start|>")
    assert backend._prepare(chat()).tokens.count(im_start) == 2  # user turn + generation prompt
    assert done.usage.prompt_ms >= 0 and done.usage.predicted_ms >= 0


def test_chat_template_override(tiny_gguf):
    b = LlamaBackend(spec_for(tiny_gguf, chat_template="{{ messages[-1]['content'] }}"), tiny_gguf, OPTS)
    try:
        assert b.chat_template == "{{ messages[-1]['content'] }}"
        assert b._token_id("<|im_start|>") not in b._prepare(chat("abc")).tokens
    finally:
        b.close()


def test_max_tokens_ends_with_length(backend):
    tokens, done = run(backend, Request("complete", prompt="x", params=forced(ord("a"), max_tokens=5)))
    assert "".join(t.text for t in tokens) == "aaaaa"
    assert (done.reason, done.usage.completion_tokens) == ("length", 5)


def alternating(first: int, second: int, **kw) -> SamplingParams:
    """Greedy with two biased tokens and a frequency penalty: first, second, first, second..."""
    return SamplingParams(temperature=0.0, frequency_penalty=10.0,
                          logit_bias={byte_token(first): 50.0, byte_token(second): 41.0}, **kw)


def test_stop_string_across_tokens_is_cut_and_not_emitted(backend):
    params = alternating(ord("a"), ord("b"), max_tokens=20, stop=("bab",))
    tokens, done = run(backend, Request("complete", prompt="x", params=params))
    assert "".join(t.text for t in tokens) == "a"  # "abab": the stop starts at the first b
    assert done.reason == "stop" and done.usage.completion_tokens == 4
    tokens, done = run(backend, Request("complete", prompt="x", params=alternating(ord("a"), ord("b"), max_tokens=5)))
    assert "".join(t.text for t in tokens) == "ababa"
    # Text held back as a possible stop's beginning is still delivered when the stop never comes.
    params = alternating(ord("a"), ord("b"), max_tokens=4, stop=("bx",))
    tokens, done = run(backend, Request("complete", prompt="x", params=params))
    assert "".join(t.text for t in tokens) == "abab" and done.reason == "length"


def test_t_max_predict_ms_stops_at_the_next_newline(backend):
    tokens, done = run(backend, Request("complete", prompt="x", params=forced(ord("\n"), max_tokens=6, t_max_predict_ms=0.001)))
    assert "".join(t.text for t in tokens) == "\n" and done.usage.completion_tokens == 1
    # Without a newline the limit never triggers: the generation runs to max_tokens.
    tokens, done = run(backend, Request("complete", prompt="x", params=forced(ord("b"), max_tokens=6, t_max_predict_ms=0.001)))
    assert done.usage.completion_tokens == 6


def test_utf8_split_across_tokens_is_joined(backend):
    # é is C3 A9: biases plus a frequency penalty make greedy alternate the two byte tokens.
    params = alternating(0xC3, 0xA9, max_tokens=8)
    tokens, done = run(backend, Request("complete", prompt="x", params=params))
    assert done.usage.completion_tokens == 8
    assert all("\ufffd" not in t.text for t in tokens)
    assert "".join(t.text for t in tokens) == "éééé"


def test_seed_makes_sampling_repeatable(backend):
    a = "".join(t.text for t in run(backend, chat(max_tokens=12, seed=42, temperature=1.0))[0])
    b = "".join(t.text for t in run(backend, chat(max_tokens=12, seed=42, temperature=1.0))[0])
    assert a == b


def test_cancel_stops_within_one_token(backend):
    cancel = threading.Event()
    events = backend.generate(Request("complete", prompt="x", params=forced(ord("c"), max_tokens=200)), cancel)
    got = [next(events) for _ in range(3)]
    cancel.set()
    rest = list(events)
    assert all(isinstance(e, TextDelta) for e in got)
    assert len(rest) == 1 and rest[0].reason == "cancelled" and rest[0].usage.completion_tokens == 3


def test_warmup_evaluates_the_prompt_and_generates_nothing(backend):
    request = Request("fim", prefix="def f(", suffix=")\n", warmup=True)
    tokens, done = run(backend, request)
    assert tokens == [] and done.usage.completion_tokens == 0 and done.usage.prompt_tokens > 0
    # The evaluated prompt stays in the KV cache: the real request reuses it.
    _, done2 = run(backend, Request("fim", prefix="def f(", suffix=")\n", params=SamplingParams(max_tokens=2)))
    assert done2.usage.cached_tokens > 0
    assert done2.usage.prompt_tokens - done2.usage.cached_tokens <= 2 * EXACT_ROW_GROUP  # at most the last row groups again


def test_prompt_longer_than_the_context_is_counted_before_any_work(backend):
    # The pool refuses it from this count (tests/test_pool.py); the backend only has to count right.
    long = Request("complete", prompt="word " * 600)
    assert backend.count_prompt_tokens(long) > backend.n_ctx
    _, done = run(backend, chat(max_tokens=2))  # still serving
    assert done.usage.completion_tokens >= 1 or done.reason == "stop"


def test_megabyte_prompt_is_refused_by_its_size_without_tokenizing(backend):
    # No token of this vocabulary spans more than a few bytes, so 1 MB cannot fit 512 tokens:
    # the refusal names the byte count (the early path), not a token count from the tokenizer.
    huge = "x = 1\n" * 200_000
    for request in (Request("complete", prompt=huge), chat(huge)):
        with pytest.raises(ContextLengthExceeded, match=r"The prompt is \d+ bytes: at least \d+ tokens"):
            backend.count_prompt_tokens(request)
    _, done = run(backend, chat(max_tokens=2))  # still serving
    assert done.reason in {"stop", "length"}


def test_overlong_fim_is_trimmed_like_llama_cpp(backend):
    request = Request("fim", prefix="p" * 3000, suffix="s" * 3000, params=SamplingParams(max_tokens=4))
    tokens, done = run(backend, request)
    assert done.truncated and done.usage.prompt_tokens <= backend.n_ctx - 4


def test_memory_accounts_for_weights_and_kv_cache(backend, tiny_gguf):
    assert backend.memory_bytes > tiny_gguf.stat().st_size


def test_missing_truncated_and_foreign_files_fail_with_the_cause(tmp_path, tiny_gguf):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadFailed, match="does not exist") as err:
        LlamaBackend(spec_for(missing, id="gone"), missing, OPTS)
    assert "'gone'" in err.value.message

    truncated = tmp_path / "half.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelLoadFailed, match="truncated") as err:
        LlamaBackend(spec_for(truncated, id="half"), truncated, OPTS)
    assert "'half'" in err.value.message

    foreign = tmp_path / "notes.gguf"
    foreign.write_text("just some text, not a model\n" * 10)
    with pytest.raises(ModelLoadFailed, match="not a GGUF file"):
        LlamaBackend(spec_for(foreign, id="notes"), foreign, OPTS)


def test_no_chat_template_falls_back_to_chatml_when_the_vocab_has_it(tmp_path):
    path = write_tiny_gguf(tmp_path / "notemplate.gguf", chat_template=None)
    b = LlamaBackend(spec_for(path), path, OPTS)
    try:
        assert "<|im_start|>" in b.chat_template
        _, done = run(b, chat(max_tokens=2))
        assert done.usage.prompt_tokens > 0
    finally:
        b.close()


@pytest.mark.parametrize("n_prompt,common,exact_tokens", [
    (300, 299, 300), (301, 300, 300), (302, 301, 300), (303, 302, 300),  # the same prompt again
    (329, 328, 328), (205, 204, 204),  # ... ending in a lone row after a row group
    (300, 37, 120), (300, 0, 0), (1, 0, 0), (130, 66, 64), (65, 64, 64), (129, 0, 0),
])
def test_prompt_slices_restart_at_a_row_group_and_never_end_on_a_lone_row(n_prompt, common, exact_tokens):
    slices, exact = prompt_slices(n_prompt, common, exact_tokens, step=64)
    start = slices[0][0]
    assert exact and start % EXACT_ROW_GROUP == 0 and start <= min(common, exact_tokens)
    assert common - start <= 2 * EXACT_ROW_GROUP  # exactness costs a few tokens, never the prompt
    assert [a for a, _ in slices[1:]] == [b for _, b in slices[:-1]] and slices[-1][1] == n_prompt
    assert all(a % EXACT_ROW_GROUP == 0 for a, _ in slices)
    assert n_prompt == 1 or slices[-1][1] - slices[-1][0] > 1


def test_prompt_slices_reuse_generated_tokens_as_they_are():
    # A chat's next turn: the previous answer (generated one token at a time) is in the cache.
    slices, exact = prompt_slices(900, common=700, exact_tokens=400, step=900)
    assert not exact and slices == [(700, 900)]
    # The same prompt again restarts at a row group inside the exact part: the same answer.
    assert prompt_slices(300, common=299, exact_tokens=300, step=300) == ([(296, 300)], True)


def test_a_cancelled_chat_prompt_stops_after_one_slice_and_keeps_it_cached(tiny_gguf):
    """An agent's long prompt is evaluated in n_batch slices: a client gone before the first token
    frees the model within one slice, and what was evaluated is reused by the retry."""
    backend = LlamaBackend(spec_for(tiny_gguf, n_ctx=2048), tiny_gguf, OPTS)
    try:
        long_chat = chat("abcdefgh " * 150, max_tokens=2, temperature=0.0)  # ~1400 byte tokens: 3 slices of 512
        n_prompt = backend.count_prompt_tokens(long_chat)
        assert n_prompt > 2 * backend._llm.n_batch
        cancel = threading.Event()
        cancel.set()
        (done,) = list(backend.generate(long_chat, cancel))
        assert done.reason == "cancelled" and backend._llm.n_tokens == backend._llm.n_batch
        _, retry = run(backend, long_chat)
        assert retry.reason in ("stop", "length") and retry.usage.cached_tokens == backend._llm.n_batch
    finally:
        backend.close()

"""The router's end of the middle through the real server, every FIM dialect, on the tiny GGUF.

The tiny model writes gibberish, so a cut is forced where the wording matters: a logit bias makes
it write newlines, and with code on both sides of the cursor the middle ends at the first one.
Elsewhere each answer is checked against the same request with `fim_trim: false`: the trimmed
answer is exactly what models/fim_end.py makes of the untrimmed one, and the finish reason says
why it ended (a cut is a stop).
"""

from __future__ import annotations

import httpx
import pytest

from server_harness import isolated_env, live_server

from models.catalog import catalog_from_files
from models.fim_end import FimEnd, hole_of
from router.app import create_app
from router.settings import Settings

NEWLINE = 3 + 0x0A  # the tiny vocabulary's byte token for "\n" (ids 0-2 are <unk> <s> </s>)
NO_SPECIALS = [[i, -100] for i in [0, 1, 2, *range(259, 280)]]
PREFIX, SUFFIX = "x = foo(", ")\nprint(x)\n"  # code on both sides of the cursor: ends on its line


def settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)


@pytest.fixture(scope="module")
def url(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fim_end")
    with isolated_env(tmp):
        app = create_app(settings(), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=2048))
        with live_server(app) as srv:
            yield srv.url


def infill(url: str, **extra) -> dict:
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "", "n_predict": 40, "temperature": 0,
            **extra}
    response = httpx.post(url + "/infill", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def completions(url: str, **extra) -> dict:
    body = {"model": "auto", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 40, "temperature": 0, **extra}
    response = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_infill_cut_is_a_word_stop_that_saved_the_tokens(url):
    newlines = [[NEWLINE, 30.0], *NO_SPECIALS]
    cut = infill(url, logit_bias=newlines)
    assert cut["content"] == "" and cut["stop_type"] == "word" and cut["stopping_word"] == "\n"
    assert cut["tokens_predicted"] <= 2  # generation stopped at the newline, not hidden after 40 tokens
    whole = infill(url, logit_bias=newlines, fim_trim=False)
    assert whole["content"] == "\n" * 40 and whole["stop_type"] == "limit" and whole["tokens_predicted"] == 40


def test_openai_cut_is_a_stop_and_the_off_switch_gives_the_models_end(url):
    newlines = {str(NEWLINE): 30, **{str(i): -100 for i, _ in NO_SPECIALS}}
    cut = completions(url, logit_bias=newlines)
    assert cut["choices"][0]["text"] == "" and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] <= 2
    whole = completions(url, logit_bias=newlines, fim_trim=False)
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 40


def test_openai_stream_sends_only_the_middle(url):
    newlines = {str(NEWLINE): 30, **{str(i): -100 for i, _ in NO_SPECIALS}}
    body = {"model": "auto", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 40, "temperature": 0,
            "logit_bias": newlines, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == ""
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def expected(prefix: str, suffix: str, whole: str) -> tuple[str, bool]:
    end = FimEnd(hole_of(prefix, suffix))
    text = end.feed(whole)
    if end.cut is None:
        text += end.finish()
    return text, end.cut is not None


HOLES = [
    (PREFIX, SUFFIX),
    ("def f(x):\n    if x:\n", "    return False\n"),
    ("def g():\n", ""),
]


@pytest.mark.parametrize("prefix,suffix", HOLES)
def test_every_dialect_trims_as_the_rules_say_and_reports_it(url, prefix, suffix):
    ban = {str(i): -100 for i, _ in NO_SPECIALS}
    off = {"fim_trim": False}

    def openai(extra):
        got = completions(url, prompt=prefix, suffix=suffix, logit_bias=ban, **extra)
        return got["choices"][0]["text"], got["choices"][0]["finish_reason"]

    def llama(extra):
        got = infill(url, input_prefix=prefix, input_suffix=suffix, logit_bias=NO_SPECIALS, **extra)
        return got["content"], got["stop_type"]

    def ollama(extra):
        body = {"model": "auto", "prompt": prefix, "suffix": suffix, "stream": False,
                "options": {"num_predict": 40, "temperature": 0}, **extra}
        got = httpx.post(url + "/api/generate", json=body, timeout=60).json()
        return got["response"], got["done_reason"]

    for call, stopped, limited in ((openai, "stop", "length"), (llama, "word", "limit"), (ollama, "stop", "length")):
        whole, how_whole = call(off)
        text, how = call({})
        want, cut = expected(prefix, suffix, whole)
        assert text == want
        if cut:
            assert how == stopped
        else:
            assert how == how_whole


def test_the_setting_turns_it_off_and_a_request_turns_it_back_on(tiny_gguf, tmp_path):
    newlines = [[NEWLINE, 30.0], *NO_SPECIALS]
    with isolated_env(tmp_path):
        app = create_app(settings(fim_trim=False), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=2048))
        with live_server(app) as srv:
            assert infill(srv.url, logit_bias=newlines)["stop_type"] == "limit"
            assert infill(srv.url, logit_bias=newlines, fim_trim=True)["stop_type"] == "word"

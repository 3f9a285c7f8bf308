"""Shape rules in every dialect, on the shipped classifier (real skops artifact, real text model)."""

from __future__ import annotations

import pytest

from classifier import Classifier, Label
from models.errors import InvalidRequest, UnsupportedParameter
from request_parsing import classify, view_of

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load()


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


# ---------------------------------------------------------------- FIM fields


def test_infill_is_fim(clf):
    d = classify(clf, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": [{"text": "x = 1", "filename": "a.py"}]})
    assert d.label is Label.fim and d.confidence == 1.0
    assert "/infill" in d.reasons[0]


def test_infill_warmup_without_model_or_text_is_fim(clf):
    assert classify(clf, "/infill", {"input_prefix": "", "input_suffix": "", "n_predict": 0}).label is Label.fim


def test_openai_completions_suffix_is_fim(clf):
    d = classify(clf, "/v1/completions", {"model": "auto", "prompt": "Once upon a time", "suffix": "the end."})
    assert d.label is Label.fim
    assert "`suffix`" in d.reasons[0]


def test_ollama_generate_suffix_is_fim(clf):
    assert classify(clf, "/api/generate", {"model": "auto", "prompt": PREFIX, "suffix": SUFFIX}).label is Label.fim


def test_empty_suffix_is_not_fim(clf):
    d = classify(clf, "/v1/completions", {"prompt": "Write a poem about the sea.", "suffix": ""})
    assert d.label is Label.instruct


# ---------------------------------------------------------------- FIM tokens of every family

FIM_PROMPTS = {
    "qwen": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "qwen-repo": f"<|repo_name|>demo\n<|file_sep|>a.py\n<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "codegemma": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|><|file_separator|>",
    "starcoder": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
    "deepseek": f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
    "codellama": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>",
    "codestral": f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}",
    "seed-coder": f"<[fim-prefix]>{PREFIX}<[fim-suffix]>{SUFFIX}<[fim-middle]>",
    "codegeex": f"<|code_prefix|>{PREFIX}<|code_suffix|>{SUFFIX}<|code_middle|>",
}


@pytest.mark.parametrize("family", sorted(FIM_PROMPTS))
@pytest.mark.parametrize(
    "endpoint,extra",
    [("/completion", {}), ("/v1/completions", {"model": "auto"}), ("/api/generate", {"raw": True}), ("/api/generate", {})],
)
def test_fim_tokens_of_every_family(clf, family, endpoint, extra):
    d = classify(clf, endpoint, {"prompt": FIM_PROMPTS[family], **extra})
    assert d.label is Label.fim
    assert "FIM tokens" in d.reasons[0]


def test_fim_tokens_in_a_chat_message_are_fim(clf):
    assert classify(clf, "/api/chat", user(FIM_PROMPTS["starcoder"])).label is Label.fim


def test_hole_marker_in_chat_is_fim(clf):
    text = "Fill the hole:\n```python\ndef f(x):\n    {{FILL_HERE}}\n```"
    d = classify(clf, "/v1/chat/completions", user(text))
    assert d.label is Label.fim and "{{FILL_HERE}}" in d.reasons[0]


def test_single_ambiguous_token_is_not_fim(clf):
    """`<PRE>` is also an HTML tag: one CodeLlama token alone does not make a FIM prompt."""
    d = classify(clf, "/v1/chat/completions", user("What does the <PRE> tag do in HTML and when should a blog use it?"))
    assert d.label is not Label.fim


def test_fim_tokens_at_the_end_of_a_huge_prompt_are_seen(clf):
    prompt = "# generated\n" + "x = 1\n" * 200_000 + "<|fim_suffix|>\n<|fim_middle|>"
    assert classify(clf, "/completion", {"prompt": prompt}).label is Label.fim


# ---------------------------------------------------------------- raw completion prompts


@pytest.mark.parametrize(
    "prompt",
    [
        "import os\nimport sys\n\ndef main():\n    ",
        "#include <stdio.h>\n\nint main(void) {\n    ",
        "function debounce(fn, ms) {\n  let t;\n",
        "// Copyright 2024\n// SPDX-License-Identifier: MIT\npackage main\n\nfunc main() {\n",
        "SELECT name, total\nFROM orders\nWHERE ",
    ],
)
@pytest.mark.parametrize("endpoint", ["/v1/completions", "/completion", "/api/generate"])
def test_raw_code_prompt_is_fim(clf, endpoint, prompt):
    d = classify(clf, endpoint, {"prompt": prompt})
    assert d.label is Label.fim
    assert "source code" in d.reasons[0]


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/completion", "/api/generate"])
def test_raw_prose_prompt_is_instruct(clf, endpoint):
    assert classify(clf, endpoint, {"prompt": "Write a short poem about autumn leaves."}).label is Label.instruct


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/completion", "/api/generate"])
def test_raw_code_request_is_code_edit(clf, endpoint):
    prompt = "Fix the bug in this function:\n\ndef avg(xs):\n    return sum(xs) / len(xs) + 1\n"
    assert classify(clf, endpoint, {"prompt": prompt}).label is Label.code_edit


def test_code_followed_by_an_instruction_is_not_fim(clf):
    prompt = "def avg(xs):\n    return sum(xs) / len(xs)\n\nExplain what this function does and when it fails."
    assert classify(clf, "/completion", {"prompt": prompt}).label is Label.code_edit


def test_token_id_prompt_is_refused_by_the_adapter_naming_the_field(clf):
    with pytest.raises(InvalidRequest) as err:
        classify(clf, "/v1/completions", {"prompt": [1, 2, 3]})
    assert (err.value.param or "").startswith("prompt")


def test_empty_ollama_prompt_is_a_load_request(clf):
    d = classify(clf, "/api/generate", {"model": "auto", "prompt": ""})
    assert d.label is Label.instruct and "load" in d.reasons[0]


# ---------------------------------------------------------------- turns and system prompts

CODE_CONVERSATION = [
    {"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."},
    {"role": "assistant", "content": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"},
]


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/api/chat"])
def test_single_turn_code_work_is_code_edit(clf, endpoint):
    d = classify(clf, endpoint, user("refactor this to use a list comprehension:\nout = []\nfor x in xs:\n    out.append(x * 2)"))
    assert d.label is Label.code_edit
    assert any(r.startswith("text: top features") for r in d.reasons)


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/api/chat"])
def test_single_turn_general_request_is_instruct(clf, endpoint):
    assert classify(clf, endpoint, user("Give me three tips for a job interview.")).label is Label.instruct


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/api/chat"])
def test_multi_turn_code_followup_is_code_edit(clf, endpoint):
    body = {"messages": CODE_CONVERSATION + [{"role": "user", "content": "now add type hints and a docstring"}]}
    assert classify(clf, endpoint, body).label is Label.code_edit


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/api/chat"])
def test_multi_turn_off_topic_is_chat(clf, endpoint):
    body = {"messages": CODE_CONVERSATION + [{"role": "user", "content": "thanks! what's a good book about the Roman empire?"}]}
    d = classify(clf, endpoint, body)
    assert d.label is Label.chat
    assert "earlier assistant turn" in d.reasons[0]


def test_system_prompt_does_not_make_a_conversation(clf):
    body = {"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "How do vaccines work?"}]}
    assert classify(clf, "/v1/chat/completions", body).label is Label.instruct


def test_system_prompt_is_context_for_the_text_model(clf):
    body = {"messages": [{"role": "system", "content": "You are a senior Rust reviewer."}, {"role": "user", "content": "hi"}]}
    assert "Rust reviewer" in view_of("/v1/chat/completions", body).context


def test_ollama_generate_context_is_refused_naming_the_field(clf):
    with pytest.raises(UnsupportedParameter) as err:
        classify(clf, "/api/generate", {"prompt": "and what about its history?", "context": [1, 2, 3]})
    assert err.value.param == "context"


def test_openai_content_parts_are_read(clf):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "fix this: print('a' + 1)"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert classify(clf, "/v1/chat/completions", body).label is Label.code_edit


def test_trailing_assistant_prefill_uses_last_user_turn(clf):
    body = {"messages": [{"role": "user", "content": "Write a haiku about snow."}, {"role": "assistant", "content": "White"}]}
    assert classify(clf, "/v1/chat/completions", body).label is Label.instruct


# ---------------------------------------------------------------- shape-only fallback


def test_shape_only_still_applies_shape_rules():
    clf = Classifier.shape_only()
    assert clf.mode == "shape-only"
    assert classify(clf, "/infill", {"input_prefix": "a", "input_suffix": "b"}).label is Label.fim
    assert classify(clf, "/v1/chat/completions", user("How are you?")).label is Label.instruct
    d = classify(clf, "/v1/chat/completions", user("fix:\n```\nx = = 1\nprint(x)\n```"))
    assert d.label is Label.code_edit and any("shape-only" in r for r in d.reasons)

"""FIM prompt building, detection and translation for every family (pure Python, plus real tiny GGUFs)."""

from __future__ import annotations

import threading

import pytest
from tiny_gguf import FIM_TOKENS, write_tiny_gguf

from models.backend import BackendOptions
from models.request import FimFile, Request, SamplingParams
from models.catalog import LocalSource, ModelSpec
from models.errors import FimNotSupported
from models.fim import (
    FAMILIES,
    build_fim_prompt,
    canonical_family,
    detect_fim,
    family_tokens,
    parse_fim_prompt,
    translate_fim_prompt,
)
from models.llama_backend import LlamaBackend

TINY_FAMILIES = ["qwen", "starcoder", "deepseek", "codellama", "codestral"]
ALL_FAMILIES = list(FAMILIES)
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return c\n"
EXTRA = (FimFile(text="import math\n", filename="util.py"), FimFile(text="X = 1", filename="consts.py"))

# What each family's prompt must look like (canonical spellings), from PROTOCOLS.md.
EXPECTED_TEXT = {
    "qwen": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "starcoder": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
    "deepseek": f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
    "codellama": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>",
    "codestral": f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}",
    "codegemma": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "seedcoder": f"<[fim-prefix]>{PREFIX}<[fim-suffix]>{SUFFIX}<[fim-middle]>",
    "codegeex": f"<|code_prefix|>{PREFIX}<|code_suffix|>{SUFFIX}<|code_middle|>",
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_detect_family_from_vocabulary_token_strings(family):
    vocab = set(FIM_TOKENS[family]) | {"<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"}
    tokens = detect_fim(vocab)
    assert tokens is not None and tokens.family == family
    assert tokens.prefix in vocab and tokens.suffix in vocab
    assert tokens.stops and all(s in vocab for s in tokens.stops)


def test_no_fim_tokens_detects_nothing_and_building_refuses_clearly():
    assert detect_fim({"<s>", "</s>", "<|im_start|>", "<|im_end|>"}) is None
    with pytest.raises(FimNotSupported, match="no fill-in-the-middle tokens") as err:
        build_fim_prompt(None, "a", "b", model_id="plain-chat")
    assert "plain-chat" in err.value.message and err.value.status == 501


def test_qwen_and_codegemma_share_tokens_but_not_the_file_separator():
    assert detect_fim({"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"}).family == "qwen"
    assert detect_fim({"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"}).family == "codegemma"


def test_override_and_aliases():
    assert detect_fim(set(), override="StarCoder2").family == "starcoder"
    assert canonical_family("deepseek-coder") == "deepseek"
    with pytest.raises(ValueError, match="unknown FIM family"):
        canonical_family("gpt")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_prompt_layout_per_family(family):
    prompt = build_fim_prompt(family_tokens(family), PREFIX, SUFFIX)
    assert prompt.text == EXPECTED_TEXT[family]
    assert prompt.stops, "every family has stop tokens"
    # Pieces: user text never parsed for special tokens, control tokens marked as such.
    specials = [p.text for p in prompt.pieces if p.special]
    texts = [p.text for p in prompt.pieces if not p.special]
    assert PREFIX in texts and SUFFIX in texts
    assert specials[0] == (family_tokens(family).suffix if family == "codestral" else family_tokens(family).prefix)


def test_repo_context_as_file_sep_blocks_for_qwen():
    text = build_fim_prompt(family_tokens("qwen"), PREFIX, SUFFIX, EXTRA).text
    assert text == (
        "<|repo_name|>myproject\n<|file_sep|>util.py\nimport math\n<|file_sep|>consts.py\nX = 1\n"
        f"<|file_sep|>filename\n<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    )


def test_repo_context_for_starcoder2_and_codestral():
    sc = build_fim_prompt(family_tokens("starcoder"), PREFIX, SUFFIX, EXTRA).text
    assert sc.startswith("<repo_name>myproject<file_sep>util.py\nimport math\n<file_sep>consts.py\nX = 1\n<file_sep><fim_prefix>")
    cs = build_fim_prompt(family_tokens("codestral"), PREFIX, SUFFIX, EXTRA).text
    assert cs == f"[SUFFIX]{SUFFIX}[PREFIX]+++++ util.py\nimport math\n\n\n+++++ consts.py\nX = 1\n\n+++++ filename\n{PREFIX}"


def test_context_without_file_separator_is_a_plain_leading_snippet():
    text = build_fim_prompt(family_tokens("deepseek"), PREFIX, SUFFIX, EXTRA).text
    assert text.startswith("import math\n") and text.endswith(EXPECTED_TEXT["deepseek"])


@pytest.mark.parametrize("source", ALL_FAMILIES)
@pytest.mark.parametrize("target", ALL_FAMILIES)
def test_translate_between_every_pair_of_families(source, target):
    client_prompt = build_fim_prompt(family_tokens(source), PREFIX, SUFFIX).text
    parsed = parse_fim_prompt(client_prompt)
    # CodeGemma's plain prompt is spelled exactly like Qwen's: the same layout either way.
    assert parsed is not None and parsed.family == ("qwen" if source == "codegemma" else source)
    assert (parsed.prefix, parsed.suffix) == (PREFIX, SUFFIX)
    out = translate_fim_prompt(client_prompt, family_tokens(target))
    assert out is not None and out.family == target
    assert out.text == EXPECTED_TEXT[target]


@pytest.mark.parametrize("source", ["qwen", "starcoder", "codestral"])
def test_translation_keeps_repo_context(source):
    client_prompt = build_fim_prompt(family_tokens(source), PREFIX, SUFFIX, EXTRA).text
    parsed = parse_fim_prompt(client_prompt)
    assert [f.filename for f in parsed.extra] == ["util.py", "consts.py"]
    assert [f.text.strip() for f in parsed.extra] == ["import math", "X = 1"]
    out = translate_fim_prompt(client_prompt, family_tokens("qwen" if source != "qwen" else "starcoder"))
    assert "util.py" in out.text and "consts.py" in out.text


def test_client_templates_as_editors_send_them():
    # Continue/Ollama CodeLlama template, Twinny-style StarCoder, DeepSeek with BOS, SPM StarCoder.
    cases = {
        "<PRE> def f(): <SUF>\nreturn 1 <MID>": ("codellama", "def f():", "\nreturn 1"),
        "<fim_prefix>import os\n<fim_suffix>\nprint(1)<fim_middle>": ("starcoder", "import os\n", "\nprint(1)"),
        "<s><｜fim▁begin｜>x = <｜fim▁hole｜>\ny = 2<｜fim▁end｜>": ("deepseek", "x = ", "\ny = 2"),
        "<fim_prefix><fim_suffix>\nreturn x<fim_middle>def g(x):\n": ("starcoder", "def g(x):\n", "\nreturn x"),
        "<|fim_prefix|>a<|fim_suffix|>c<|fim_middle|>b": ("qwen", "ab", "c"),  # a started middle joins the prefix
    }
    for prompt, (family, prefix, suffix) in cases.items():
        parsed = parse_fim_prompt(prompt)
        assert (parsed.family, parsed.prefix, parsed.suffix) == (family, prefix, suffix), prompt


def test_plain_prompts_are_not_fim():
    assert parse_fim_prompt("def f():\n    return 1\n") is None
    assert translate_fim_prompt("Write a poem about <PRE> tags", family_tokens("qwen")) is None


def test_same_family_prompt_is_kept_as_the_client_wrote_it():
    client = "<|repo_name|>r\n<|file_sep|>a.py\n<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>"
    out = translate_fim_prompt(client, family_tokens("qwen"))
    assert out.text == client and out.pieces == ()


def test_translating_into_a_model_without_fim_is_refused():
    with pytest.raises(FimNotSupported, match="starcoder fill-in-the-middle prompt"):
        translate_fim_prompt("<fim_prefix>a<fim_suffix>b<fim_middle>", None, model_id="chatty")


# ---- on real (tiny) GGUF vocabularies, through llama.cpp's tokenizer ----------------------------


@pytest.fixture(scope="module")
def family_backends(tmp_path_factory):
    out = {}
    for family in [*TINY_FAMILIES, None]:
        path = write_tiny_gguf(tmp_path_factory.mktemp("fim") / f"tiny-{family}.gguf", fim_family=family)
        spec = ModelSpec(id=f"tiny-{family}", labels=["fim"], source=LocalSource(path=path), n_ctx=512)
        out[family] = LlamaBackend(spec, path, BackendOptions(n_threads=1, n_threads_batch=1))
    yield out
    for backend in out.values():
        backend.close()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_backend_detects_family_and_puts_fim_token_ids_in_place(family_backends, family):
    backend = family_backends[family]
    assert backend.capabilities.fim and backend.fim.family == family
    request = Request("fim", prefix=PREFIX, suffix=SUFFIX, params=SamplingParams(max_tokens=4))
    tokens = backend._prepare(request).tokens
    fam = family_tokens(family)
    pre, suf = backend._token_id(backend.fim.prefix), backend._token_id(backend.fim.suffix)
    assert pre is not None and suf is not None and 0 not in (pre, suf)
    assert tokens.count(pre) == 1 and tokens.count(suf) == 1
    if fam.order == "spm":
        assert tokens.index(suf) < tokens.index(pre)
    else:
        mid = backend._token_id(backend.fim.middle)
        assert tokens.index(pre) < tokens.index(suf) < tokens.index(mid) == len(tokens) - 1
    # The family's stop tokens end a middle.
    assert backend._prepare(request).stop_ids


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_backend_rewrites_another_familys_client_prompt(family_backends, family):
    backend = family_backends[family]
    other = "deepseek" if family != "deepseek" else "qwen"
    client = build_fim_prompt(family_tokens(other), PREFIX, SUFFIX).text
    translated = backend._prepare(Request("complete", prompt=client)).tokens
    native = backend._prepare(Request("fim", prefix=PREFIX, suffix=SUFFIX)).tokens
    assert translated == native


def test_user_text_that_spells_fim_tokens_stays_text(family_backends):
    backend = family_backends["qwen"]
    tokens = backend._prepare(Request("fim", prefix="s = '<|fim_middle|>'\n", suffix="")).tokens
    assert tokens.count(backend._token_id("<|fim_middle|>")) == 1  # only ours, at the end


def test_no_fim_model_refuses_fim_and_foreign_fim_prompts(family_backends):
    backend = family_backends[None]
    assert backend.capabilities.fim is False
    with pytest.raises(FimNotSupported, match="tiny-None"):
        list(backend.generate(Request("fim", prefix="a", suffix="b"), threading.Event()))
    with pytest.raises(FimNotSupported):
        list(backend.generate(Request("complete", prompt="<fim_prefix>a<fim_suffix>b<fim_middle>"),
                              threading.Event()))


def test_fim_generation_runs_and_ends_on_stop_or_length(family_backends):
    backend = family_backends["qwen"]
    events = list(backend.generate(
        Request("fim", prefix=PREFIX, suffix=SUFFIX, params=SamplingParams(max_tokens=8, temperature=0)),
        threading.Event(),
    ))
    done = events[-1]
    assert done.reason in ("stop", "length") and done.usage.completion_tokens <= 8
    assert done.usage.prompt_tokens == len(backend._prepare(Request("fim", prefix=PREFIX, suffix=SUFFIX)).tokens)

"""The FIM token table has one owner (models/fim.py) and the classifier and the backends agree on it."""

from __future__ import annotations

import pytest

from classifier.fim_tokens import find_fim_family
from models.backend import BackendOptions
from models.catalog import LocalSource, ModelSpec
from models.fim import FAMILIES, build_fim_prompt, family_tokens
from models.llama_backend import LlamaBackend
from models.request import FimFile
from tiny_gguf import FIM_TOKENS, write_tiny_gguf


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_detection_marker_is_one_of_the_familys_spellings(name):
    family = FAMILIES[name]
    spellings = {*family.prefix, *family.suffix, *family.middle, *family.pad, *family.repo, *family.file_sep}
    assert family.markers and set(family.markers) <= spellings
    assert 1 <= family.markers_needed <= len(family.markers)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_prompt_a_backend_builds_for_a_family_is_detected_as_that_family(name):
    extra = (FimFile("x = 1\n", "util.py"),)  # repo context brings the file separator CodeGemma is told apart by
    built = build_fim_prompt(family_tokens(name), "def add(a, b):\n    ", "\nprint(add(1, 2))\n", extra)
    assert find_fim_family(built.text) == name


@pytest.mark.parametrize("family", list(FIM_TOKENS))
def test_the_tokens_a_loaded_model_uses_are_the_ones_the_classifier_looks_for(tmp_path, family):
    path = write_tiny_gguf(tmp_path / f"tiny-{family}.gguf", fim_family=family)
    spec = ModelSpec(id=f"tiny-{family}", labels=["fim"], source=LocalSource(path=path), n_ctx=512)
    backend = LlamaBackend(spec, path, BackendOptions(n_threads=1, n_threads_batch=1))
    try:
        tokens = backend.fim
        assert tokens is not None and tokens.family == family
        client_prompt = f"{tokens.prefix}def f(x):\n    {tokens.suffix}\n    return y\n{tokens.middle or ''}"
        assert find_fim_family(client_prompt) == family
    finally:
        backend.close()

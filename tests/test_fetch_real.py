"""The real starter weights, where `route models pull` has put them (skipped otherwise)."""

from __future__ import annotations

import pytest

from models import fetch
from models.catalog import builtin_profile

pytestmark = pytest.mark.qwen


def test_real_starter_coder_matches_its_pins(qwen_gguf):
    spec = builtin_profile("starter").get("qwen2.5-coder-0.5b-instruct")
    assert fetch.pull(spec, progress=False) == qwen_gguf  # full sha256 of the cached bytes
    assert qwen_gguf.open("rb").read(4) == b"GGUF"
    assert qwen_gguf.resolve().name == spec.source.sha256  # filed as huggingface-hub files LFS blobs

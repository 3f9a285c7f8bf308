"""Shared fixtures: real tiny GGUF files written once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_gguf import write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama-architecture GGUF with Qwen-style FIM tokens and a ChatML template."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen.gguf", fim_family="qwen")


@pytest.fixture(scope="session")
def tiny_gguf_nofim(tmp_path_factory) -> Path:
    """The same tiny model without any FIM tokens: must never be offered for `fim`."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-nofim.gguf", fim_family=None, seed=1)


# --------------------------------------------------------------------------- catalog owner: real weights


@pytest.fixture(scope="session")
def qwen_gguf() -> Path:
    """The starter profile's real Qwen2.5-Coder-0.5B-Instruct GGUF from the HF cache, never
    downloaded here (`route models pull qwen2.5-coder-0.5b-instruct` fetches it; `make test` does)."""
    from models.catalog import builtin_profile
    from models.errors import WeightsUnavailable
    from models.fetch import resolve_weights

    spec = builtin_profile("starter").get("qwen2.5-coder-0.5b-instruct")
    try:
        return resolve_weights(spec, download=False, progress=False)
    except WeightsUnavailable as exc:
        pytest.skip(f"real Qwen2.5-Coder-0.5B-Instruct weights not available: {exc.message}")


@pytest.fixture(scope="module")
def qwen_server(qwen_gguf, tiny_gguf_nofim, tmp_path_factory):
    """Qwen answers code_edit and fim; the tiny model (ChatML, no tools) stands in for chat/instruct."""
    from server_harness import isolated_env, live_server

    from models.catalog import catalog_from_files
    from router.app import create_app
    from router.settings import Settings

    tmp = tmp_path_factory.mktemp("qwen-server")
    with isolated_env(tmp):
        catalog = catalog_from_files(
            {"code_edit": qwen_gguf, "fim": qwen_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim}, n_ctx=4096
        )
        app = create_app(Settings(idle_ttl_s=0), catalog=catalog)
        with live_server(app) as srv:
            yield srv

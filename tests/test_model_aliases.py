"""model_aliases: the vendor names agent CLIs ask for (claude-*, gpt-*) routed as configured, the rest a 404."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from typer.testing import CliRunner

from server_harness import isolated_env, live_server

from classifier import Classifier
from models.catalog import catalog_from_files
from models.errors import ModelNotFound
from models.request import Request, text_message
from router.app import create_app
from router.cli import app as cli_app
from router.routing import Router
from router.settings import DEFAULT_MODEL_ALIASES, Settings


def ask(model: str, text: str = "def add(a, b): return a + b  # fix this") -> Request:
    return Request("chat", model=model, messages=(text_message("user", text),))


@pytest.fixture(scope="module")
def catalog(tiny_gguf, tiny_gguf_nofim):
    return catalog_from_files({"code_edit": tiny_gguf, "chat": tiny_gguf_nofim})


def test_default_aliases_route_vendor_names_like_auto_and_say_so(catalog):
    router = Router(catalog, Classifier.shape_only(), aliases=DEFAULT_MODEL_ALIASES)
    auto = router.route(ask("auto"))
    for name in ("claude-opus-4-5-20251101", "claude-haiku-4-5", "gpt-5.2-codex", "o3", "codex-mini-latest"):
        route = router.route(ask(name))
        assert (route.label, route.model_id) == (auto.label, auto.model_id)
        assert route.reasons[0].startswith(f"model `{name}` matches alias `") and route.reasons[0].endswith("-> auto")


def test_first_matching_alias_wins_and_may_force_a_label_or_a_model(catalog):
    code_id, chat_id = (spec.id for spec in catalog.models)
    aliases = {"claude-haiku-*": "chat", "claude-*": code_id, "my-*": chat_id}
    router = Router(catalog, Classifier.shape_only(), aliases=aliases)
    haiku = router.route(ask("claude-haiku-4-5"))
    assert haiku.label == "chat" and haiku.model_id == chat_id and "alias `claude-haiku-*` -> chat" in haiku.reasons[0]
    assert router.route(ask("claude-opus-4")).model_id == code_id
    assert router.route(ask("my-model")).model_id == chat_id


def test_names_the_catalog_knows_are_never_aliased(catalog):
    code_id = catalog.models[0].id
    router = Router(catalog, Classifier.shape_only(), aliases={"*": "chat"})
    route = router.route(ask(code_id))
    assert route.model_id == code_id and not any("alias" in r for r in route.reasons)
    assert router.route(ask("chat")).label == "chat"  # a label is never aliased either


def test_a_name_no_alias_matches_is_still_a_404(catalog):
    router = Router(catalog, Classifier.shape_only(), aliases=DEFAULT_MODEL_ALIASES)
    for name in ("llama3", "claude", "GPT-4o", "tiny-qwen\n"):
        with pytest.raises(ModelNotFound):
            router.route(ask(name))


def test_an_alias_to_an_unknown_target_is_refused_at_start(catalog):
    with pytest.raises(ValueError, match="not `auto`, a label"):
        Router(catalog, Classifier.shape_only(), aliases={"claude-*": "claude-big"})


def test_route_config_shows_the_aliases(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTE_CONFIG_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("ROUTE_MODEL_ALIASES", json.dumps({"claude-*": "code_edit"}))
    result = CliRunner().invoke(cli_app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["settings"]["model_aliases"]
    assert shown == {"value": {"claude-*": "code_edit"}, "source": "env ROUTE_MODEL_ALIASES"}


def test_the_clis_default_names_work_against_the_server(tiny_gguf, tiny_gguf_nofim, tmp_path):
    with isolated_env(tmp_path):
        catalog = catalog_from_files({"code_edit": tiny_gguf, "chat": tiny_gguf_nofim})
        with live_server(create_app(Settings(idle_ttl_s=0), catalog=catalog)) as server:
            claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
            raw = claude.messages.with_raw_response.create(model="claude-opus-4-5", max_tokens=3,
                                                           messages=[{"role": "user", "content": "hi"}])
            assert raw.headers["x-route-model"] in {spec.id for spec in catalog.models}
            gpt = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            reply = gpt.chat.completions.with_raw_response.create(
                model="gpt-4o", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
            assert reply.headers["x-route-model"] in {spec.id for spec in catalog.models}
            with pytest.raises(openai.NotFoundError):
                gpt.chat.completions.create(model="mistral-large", max_tokens=3,
                                            messages=[{"role": "user", "content": "hi"}])

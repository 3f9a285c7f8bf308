"""The `route` CLI through typer's test runner: every command and error path, in-process on the tiny GGUF.

Each test runs with its own config file, models dir and an unused port, so nothing a developer
has configured (or a router they have running) leaks in. The tiny model's text is gibberish:
the tests assert structure (decision, JSON shape, token counts, exit codes), never wording.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from server_harness import decision_line, unused_port
from typer.testing import CliRunner

from router.cli import app, compose_prompt, parse_model_files
from router.settings import setting_sources

runner = CliRunner()






@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path) -> Path:
    """No user config, no stray ROUTE_* variables, no router on the probed port, offline hub."""
    for name in list(os.environ):
        if name.startswith("ROUTE_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config.yaml"
    monkeypatch.setenv("ROUTE_CONFIG_FILE", str(config))
    monkeypatch.setenv("ROUTE_PORT", str(unused_port()))
    monkeypatch.setenv("ROUTE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ROUTE_N_THREADS", "1")
    monkeypatch.setenv("ROUTE_N_THREADS_BATCH", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return config


@pytest.fixture
def tiny_models(monkeypatch, tiny_gguf) -> Path:
    """Every label served by the tiny GGUF, through the same LABEL=PATH setting `route serve --model` uses."""
    files = {label: str(tiny_gguf) for label in ("code_edit", "fim", "chat", "instruct")}
    monkeypatch.setenv("ROUTE_MODELS", json.dumps(files))
    return tiny_gguf


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def assert_clean_error(result, *needles: str, exit_code: int = 1) -> None:
    """An error is a short message on stderr with the given exit code, never a traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


# ------------------------------------------------------------------ help and the default command


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("ask", "serve", "config"):
        assert command in result.stdout
    assert 'route "' in result.stdout  # the default-command usage is shown first


@pytest.mark.parametrize(
    "command",
    [["ask"], ["serve"], ["config"], ["classify"], ["explain"], ["eval"], ["train"],
     ["models"], ["models", "list"], ["models", "pull"], ["models", "rm"]],
)
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and "--help" in result.stdout


def test_prompt_is_the_default_command(tiny_models):
    result = run("write a python function that reverses a string", "--local", "--max-tokens", "4")
    assert result.exit_code == 0, result.output
    decision = decision_line(result.stderr)
    assert "code_edit" in decision or "instruct" in decision
    assert "tiny" in decision  # the model id comes from the file name
    assert "confidence" in decision
    assert result.stdout.endswith("\n")
    assert "loading" not in result.stderr and "tokens in" not in result.stderr  # no spinner or stats off a terminal


def test_options_before_the_prompt_still_mean_the_default_command(tiny_models):
    result = run("--model", "chat", "--local", "--max-tokens", "2", "hello", "there")
    assert result.exit_code == 0, result.output
    assert "chat" in decision_line(result.stderr)


def test_json_result_shape(tiny_models):
    result = run("explain what a monad is", "--local", "--json", "--max-tokens", "3", "--seed", "1")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) >= {"label", "model", "confidence", "reasons", "text", "finish_reason", "usage", "via"}
    assert payload["label"] in ("code_edit", "chat", "instruct")
    assert payload["via"] == "in-process"
    assert 0.0 <= payload["confidence"] <= 1.0
    assert isinstance(payload["reasons"], list) and payload["reasons"]
    assert payload["finish_reason"] in ("stop", "length")
    assert 0 <= payload["usage"]["completion_tokens"] <= 3
    assert payload["usage"]["prompt_tokens"] > 0
    assert "confidence" not in result.stderr  # --json keeps the decision line out of stderr too


def test_forced_label_and_forced_model_id(tiny_models):
    by_label = json.loads(run("hi", "--local", "--json", "-m", "fim", "--raw", "--max-tokens", "1").stdout)
    assert by_label["label"] == "fim" and by_label["confidence"] == 1.0
    model_id = by_label["model"]
    by_id = json.loads(run("hi", "--local", "--json", "-m", model_id, "--max-tokens", "1").stdout)
    assert by_id["model"] == model_id


def test_ctx_size_flag_and_setting_set_the_models_context(tiny_models, monkeypatch):
    prompt = "word " * 40  # about 370 tokens with the chat template: fits the tiny model's trained 512, not 256
    assert run(prompt, "--local", "--json", "--max-tokens", "1").exit_code == 0
    assert_clean_error(run(prompt, "--local", "--ctx-size", "256", "--max-tokens", "1"), "context of 256")
    monkeypatch.setenv("ROUTE_N_CTX", "256")
    assert_clean_error(run(prompt, "--local", "--max-tokens", "1"), "context of 256")
    assert run(prompt, "--local", "-c", "512", "--json", "--max-tokens", "1").exit_code == 0  # the flag beats env


def test_catalog_flag_picks_the_models(tmp_path, tiny_gguf):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        "  - id: my-tiny\n"
        "    labels: [code_edit, chat, instruct]\n"
        f"    source: {{kind: local, path: '{tiny_gguf}'}}\n"
    )
    result = run("write a python function", "--local", "--json", "--max-tokens", "1", "--catalog", str(catalog))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "my-tiny"
    unknown = run("hello", "--local", "--profile", "no-such-profile")
    assert_clean_error(unknown, "no-such-profile", "starter")


def test_piped_stdin_is_appended_to_the_prompt(tiny_models):
    alone = json.loads(run("add type hints", "--local", "--json", "--max-tokens", "1").stdout)
    code = "def add(a, b):\n    return a + b\n" * 5
    combined = run("add type hints", "--local", "--json", "--max-tokens", "1", input=code)
    assert combined.exit_code == 0, combined.output
    payload = json.loads(combined.stdout)
    assert payload["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + 20


def test_stdin_alone_is_the_prompt(tiny_models):
    result = run("--local", "--json", "--max-tokens", "1", input="summarise the history of Rome")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["usage"]["prompt_tokens"] > 0


def test_compose_prompt_puts_the_instruction_first():
    assert compose_prompt(["add", "type", "hints"], "def f(x):\n    return x\n") == (
        "add type hints\n\ndef f(x):\n    return x"
    )
    assert compose_prompt(None, "just stdin\n") == "just stdin"
    assert compose_prompt(["only", "args"], "") == "only args"


# ------------------------------------------------------------------ error paths


def test_empty_prompt_is_a_usage_error():
    result = run("--local", input="")
    assert result.exit_code == 2
    assert "no prompt given" in result.output
    assert "Traceback" not in result.output


def test_empty_model_is_a_usage_error(tiny_models):
    result = run("hello", "--model", " ")
    assert result.exit_code == 2
    assert "--model" in result.output


def test_unknown_model_names_the_fix(tiny_models):
    result = run("hello", "--local", "--model", "no-such-model")
    assert_clean_error(result, "error:", "no-such-model", "route models list")


def test_missing_weights_offline_is_a_clear_message(monkeypatch, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        "  - id: ghost-coder\n"
        "    labels: [code_edit, chat, instruct]\n"
        "    source:\n"
        "      kind: hf\n"
        "      repo: nobody/ghost-coder-GGUF\n"
        "      file: ghost-coder-q4_k_m.gguf\n"
        "      revision: main\n"
        f"      sha256: '{'0' * 64}'\n"
        "      size_bytes: 1000\n"
    )
    monkeypatch.setenv("ROUTE_CATALOG", str(catalog))
    result = run("write a python function that reverses a string", "--local")
    assert_clean_error(result, "error:", "ghost-coder")


def test_debug_shows_the_traceback(tiny_models):
    result = run("hello", "--local", "--model", "no-such-model", "--debug")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "ModelNotFound" in result.stderr


def test_server_and_local_contradict():
    result = run("hello", "--server", "http://127.0.0.1:1", "--local")
    assert result.exit_code == 2


def test_unreachable_server_is_a_clear_message():
    port = unused_port()
    result = run("hello", "--server", f"http://127.0.0.1:{port}")
    assert_clean_error(result, "cannot reach the router", "route serve")


def test_bad_setting_from_env_names_its_source(monkeypatch):
    monkeypatch.setenv("ROUTE_QUEUE_SIZE", "many")
    result = run("config")
    assert_clean_error(result, "queue_size", "ROUTE_QUEUE_SIZE")


def test_unknown_key_in_config_file_is_named(isolated):
    isolated.write_text("port: 9001\nbogus_knob: 3\n")
    result = run("config")
    assert_clean_error(result, "bogus_knob")


# ------------------------------------------------------------------ serve argument checks


@pytest.mark.parametrize(
    "value, needle",
    [
        ("code_edit", "LABEL=PATH"),
        ("=x.gguf", "LABEL=PATH"),
        ("poetry=x.gguf", "unknown label"),
        ("code_edit=/nonexistent/x.gguf", "no such file"),
    ],
)
def test_serve_rejects_bad_model_syntax(value, needle):
    result = run("serve", "--model", value)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_parse_model_files_accepts_each_label_once(tiny_gguf):
    files = parse_model_files([f"code_edit={tiny_gguf}", f"fim={tiny_gguf}"])
    assert files == {"code_edit": tiny_gguf.resolve(), "fim": tiny_gguf.resolve()}
    with pytest.raises(Exception, match="twice"):
        parse_model_files([f"fim={tiny_gguf}", f"fim={tiny_gguf}"])


def test_serve_refuses_a_public_address_without_an_api_key():
    result = run("serve", "--host", "0.0.0.0")
    assert_clean_error(result, "0.0.0.0", "API key")


def test_serve_refuses_a_missing_catalog_file(tmp_path):
    result = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such file" in result.output


# ------------------------------------------------------------------ config


def test_config_shows_value_and_source(monkeypatch, isolated):
    isolated.write_text("queue_size: 7\n")
    monkeypatch.setenv("ROUTE_IDLE_TTL_S", "30")
    result = run("config", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    settings = payload["settings"]
    assert payload["config_file"] == str(isolated) and payload["config_file_exists"] is True
    assert settings["queue_size"] == {"value": 7, "source": f"config file {isolated}"}
    assert settings["idle_ttl_s"] == {"value": 30.0, "source": "env ROUTE_IDLE_TTL_S"}
    assert settings["profile"]["source"] == "default"
    flagged = json.loads(run("config", "--json", "--port", "9009", "--profile", "laptop").stdout)["settings"]
    assert flagged["port"] == {"value": 9009, "source": "flag"}  # beats the fixture's ROUTE_PORT
    assert flagged["profile"] == {"value": "laptop", "source": "flag"}


def test_config_table_masks_the_api_key(monkeypatch):
    monkeypatch.setenv("ROUTE_API_KEY", "sekrit-value")
    result = run("config")
    assert result.exit_code == 0, result.output
    assert "sekrit-value" not in result.stdout
    assert "api_key" in result.stdout and "env ROUTE_API_KEY" in result.stdout


def test_env_beats_config_file_and_flags_beat_env(monkeypatch, isolated):
    isolated.write_text("port: 9001\n")
    assert setting_sources()["port"].startswith("env ROUTE_PORT")  # the fixture sets ROUTE_PORT
    monkeypatch.delenv("ROUTE_PORT")
    assert setting_sources()["port"] == f"config file {isolated}"
    assert setting_sources(port=9002)["port"] == "flag"


def test_the_readme_config_example_is_valid(isolated, monkeypatch):
    """The config file shown in README.md loads, and each of its keys is reported as coming from the file."""
    for name in ("ROUTE_PORT", "ROUTE_N_THREADS", "ROUTE_N_THREADS_BATCH"):
        monkeypatch.delenv(name)
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("# ~/.config/route/config.yaml\n", 1)[1].split("```", 1)[0]
    isolated.write_text(block)
    result = run("config", "--json")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    keys = [line.split(":", 1)[0] for line in block.splitlines() if line and not line.startswith("#")]
    assert keys and all(settings[key]["source"] == f"config file {isolated}" for key in keys)
    assert settings["api_key"]["value"] == "********"

"""`route models list | pull | rm` through typer's test runner, on a seeded offline HF cache."""

from __future__ import annotations

import json
import os
import socket

import pytest
import typer
import yaml
from typer.testing import CliRunner

from router.cli import app
from router.cli_models import human_size, register
from test_fetch import COMMIT, FILE, REPO, hf_cache, seed_cache, sha256_file  # noqa: F401

runner = CliRunner()


@pytest.fixture
def catalog_file(tmp_path, monkeypatch, hf_cache, tiny_gguf):
    """A catalog with one HF model (seeded in the cache), one missing HF model and one local file."""
    for name in list(os.environ):
        if name.startswith("ROUTE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ROUTE_CONFIG_FILE", str(tmp_path / "config.yaml"))
    with socket.socket() as sock:  # no router listens there: the LOADED column stays away
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ROUTE_PORT", str(sock.getsockname()[1]))
    data = {"models": [
        {"id": "tiny", "labels": ["code_edit", "fim"], "source": {
            "kind": "hf", "repo": REPO, "file": FILE, "revision": COMMIT,
            "sha256": sha256_file(tiny_gguf), "size_bytes": tiny_gguf.stat().st_size}},
        {"id": "absent", "labels": ["chat"], "source": {
            "kind": "hf", "repo": "nobody/Absent-GGUF", "file": "absent.gguf", "revision": COMMIT, "sha256": "a" * 64}},
        {"id": "mine", "labels": ["instruct"], "source": {"kind": "local", "path": str(tiny_gguf)}},
    ]}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    seed_cache(hf_cache, tiny_gguf)
    return path


def run(*args: str):
    return runner.invoke(app, list(args))


def test_list_json_shows_labels_sizes_and_cache_state(catalog_file, tiny_gguf):
    result = run("models", "list", "--catalog", str(catalog_file), "--json")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    assert rows["tiny"]["cached"] is True and rows["tiny"]["labels"] == ["code_edit", "fim"]
    assert rows["tiny"]["size_bytes"] == tiny_gguf.stat().st_size
    assert rows["absent"]["cached"] is False
    assert rows["mine"]["kind"] == "local" and rows["mine"]["cached"] is True
    assert all(r["loaded"] is None for r in rows.values())


def test_list_table_has_one_line_per_model(catalog_file):
    result = run("models", "list", "--catalog", str(catalog_file))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "LABELS", "SIZE", "CACHED"]
    assert lines[1].split()[0] == "tiny" and " yes " in lines[1]
    assert lines[2].split()[0] == "absent" and " no " in lines[2]
    assert "LOADED" not in lines[0]


def test_list_of_a_builtin_profile_without_any_weights(catalog_file):
    result = run("models", "list", "--profile", "laptop", "--json")
    assert result.exit_code == 0, result.output
    assert {r["id"] for r in json.loads(result.stdout)} >= {"qwen2.5-coder-7b-instruct", "llama-3.1-8b-instruct"}
    assert not any(r["cached"] for r in json.loads(result.stdout))


def test_pull_of_a_cached_model_verifies_and_prints_its_path(catalog_file, hf_cache):
    result = run("models", "pull", "tiny", "--catalog", str(catalog_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"snapshots/{COMMIT}/{FILE}")
    assert "verified tiny" in result.stderr


def test_pull_by_label_and_offline_failure_is_short(catalog_file):
    result = run("models", "pull", "chat", "--catalog", str(catalog_file))
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.output


def test_pull_of_an_unknown_model_names_the_known_ones(catalog_file):
    result = run("models", "pull", "nope", "--catalog", str(catalog_file))
    assert result.exit_code == 1
    assert "tiny, absent, mine" in result.stderr


def test_rm_deletes_cached_weights_and_refuses_local_files(catalog_file, tiny_gguf):
    result = run("models", "rm", "tiny", "--catalog", str(catalog_file))
    assert result.exit_code == 0 and "removed tiny" in result.stderr
    listing = json.loads(run("models", "list", "--catalog", str(catalog_file), "--json").stdout)
    assert next(r for r in listing if r["id"] == "tiny")["cached"] is False
    again = run("models", "rm", "tiny", "--catalog", str(catalog_file))
    assert again.exit_code == 0 and "nothing to remove" in again.stderr
    local = run("models", "rm", "mine", "--catalog", str(catalog_file))
    assert local.exit_code == 1 and tiny_gguf.exists()


def test_invalid_catalog_is_a_clear_error(catalog_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - id: x\n    labelz: [chat]\n    source: {kind: local, path: /x.gguf}\n")
    result = run("models", "list", "--catalog", str(bad))
    assert result.exit_code == 1
    assert "models.0.labelz: unknown key" in result.stderr and "Traceback" not in result.output


def test_the_loaded_hook_adds_a_column(catalog_file):
    standalone = typer.Typer()

    @standalone.callback()
    def root() -> None:
        """A bare app, as router.cli would register it."""

    register(standalone, loaded_models=lambda settings: {"tiny"})
    result = runner.invoke(standalone, ["models", "list", "--catalog", str(catalog_file), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    assert rows["tiny"]["loaded"] is True and rows["absent"]["loaded"] is False
    table = runner.invoke(standalone, ["models", "list", "--catalog", str(catalog_file)])
    assert "LOADED" in table.stdout.splitlines()[0]


def test_human_sizes():
    assert human_size(491_400_064) == "491.4 MB"
    assert human_size(4_683_073_536) == "4.7 GB"
    assert human_size(None) == "-" and human_size(512) == "512 B"

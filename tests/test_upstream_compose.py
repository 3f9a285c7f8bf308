"""docker-compose.yml without a Docker engine: schema-valid, accepted by `docker-compose config`,
and consistent with the router's catalog and the starter profile's pinned weights."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from models.catalog import UpstreamSource, builtin_profile, load_catalog

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
LLAMA_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def llama_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == LLAMA_IMAGE}


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) where it works, else Debian's python `docker-compose`."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


# --- validators ------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema(tmp_path):
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema (dev extra) vendors the compose-spec schema; it is not installed"
    )
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator really validates: a misspelt key is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  router:\n    imagee: prompt-router\n")
    refused = check_jsonschema(broken)
    assert refused.returncode != 0 and "imagee" in refused.stdout + refused.stderr


def test_docker_compose_config_accepts_it():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: install Debian's `docker-compose` package (or the docker compose plugin)")
    env = {**os.environ, "ROUTE_API_KEY": "test-key"}
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"fetch-models", "coder", "chat", "router"}
    assert resolved["services"]["router"]["environment"]["ROUTE_API_KEY"] == "test-key"
    # Without an API key the router would listen on 0.0.0.0 unprotected: compose refuses to start.
    env.pop("ROUTE_API_KEY")
    refused = subprocess.run([*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert refused.returncode != 0 and "ROUTE_API_KEY" in refused.stderr


# --- consistency with the catalog and the profile -----------------------------------------------


def test_one_healthchecked_llama_cpp_server_per_model_on_the_shared_volume():
    services = llama_services()
    assert set(services) == {"coder", "chat"}
    for name, svc in services.items():
        assert "/health" in " ".join(svc["healthcheck"]["test"]), name
        assert "models:/models:ro" in svc["volumes"], name
        assert svc["depends_on"]["fetch-models"]["condition"] == "service_completed_successfully"
    fetch = compose()["services"]["fetch-models"]
    assert "models:/models" in fetch["volumes"] and fetch["environment"]["HF_HOME"] == "/models/hf"
    assert "models" in compose()["volumes"]


def test_model_paths_are_the_starter_profiles_pinned_files():
    """Each container loads exactly the file `route models pull --profile starter` puts in the cache."""
    starter = builtin_profile("starter")
    for name, svc in llama_services().items():
        alias = flag(svc["command"], "--alias")
        spec = starter.get(alias)
        assert spec is not None, f"{name}: --alias {alias} is not a starter model"
        src = spec.source
        repo_dir = "models--" + src.repo.replace("/", "--")
        expected = f"/models/hf/hub/{repo_dir}/snapshots/{src.revision}/{src.file}"
        assert flag(svc["command"], "--model") == expected, name


def test_router_catalog_points_each_label_at_a_container():
    router = compose()["services"]["router"]
    mount = next(v for v in router["volumes"] if v.endswith(":/etc/route/catalog.yaml:ro"))
    catalog = load_catalog(ROOT / mount.split(":")[0].removeprefix("./"))
    assert router["environment"]["ROUTE_CATALOG"] == "/etc/route/catalog.yaml"
    services = llama_services()
    labels = set()
    for spec in catalog.models:
        assert isinstance(spec.source, UpstreamSource) and spec.source.api == "llama.cpp"
        for url in spec.source.urls:
            parsed = urlparse(url)
            assert parsed.hostname in services, url
            svc = services[parsed.hostname]
            assert str(parsed.port) == flag(svc["command"], "--port")
            assert spec.source.upstream_model == flag(svc["command"], "--alias")
            assert router["depends_on"][parsed.hostname]["condition"] == "service_healthy"
            # Each llama-server slot gets ctx-size / parallel tokens: the catalog must not promise more.
            per_slot = int(flag(svc["command"], "--ctx-size")) // int(flag(svc["command"], "--parallel"))
            assert spec.n_ctx <= per_slot, spec.id
            assert spec.source.parallel == int(flag(svc["command"], "--parallel")), spec.id
        labels.update(spec.labels)
    assert labels == {"code_edit", "fim", "chat", "instruct"}
    assert router["ports"] == ["127.0.0.1:${ROUTE_HOST_PORT:-8012}:8012"]  # host loopback only


def test_mixed_catalog_example_loads_with_in_process_and_upstream_models():
    catalog = load_catalog(ROOT / "deploy" / "catalog.mixed.yaml")
    kinds = {spec.id: spec.source.kind for spec in catalog.models}
    assert "hf" in kinds.values() and "upstream" in kinds.values()
    assert {label for spec in catalog.models for label in spec.labels} == {"code_edit", "fim", "chat", "instruct"}


def test_router_image_copies_only_what_exists_and_the_dockerignore_admits():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    admitted = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    sources = [m.split()[:-1] for m in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M)]
    assert sources
    for group in sources:
        for source in group:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in admitted, source
    for svc in ("fetch-models", "router"):
        assert compose()["services"][svc]["build"]["dockerfile"] == "deploy/Dockerfile"

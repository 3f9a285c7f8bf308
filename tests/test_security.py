"""Who may reach the router and what it will touch: loopback by default, API key, CORS, paths and
model names, the classifier's trusted types, and secrets kept out of logs.

Policy for /health and /: they stay open without the API key (liveness probes, llama.vscode's
health check, Claude Code's `HEAD /`) and say nothing about models or prompts; every other path,
/openapi.json and /metrics included, needs `Authorization: Bearer <key>` (or `x-api-key: <key>`)
when a key is configured.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from typer.testing import CliRunner

from server_harness import isolated_env, live_server

from models.catalog import CatalogError, catalog_from_files, load_catalog
from router.app import create_app
from router.cli import app as cli_app
from router.security import InsecureBind, is_loopback
from router.state import app_state
from router.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-router-test-5e3c1b8f0a9d4c2e"
WRONG_KEY = "sk-wrong-guess-77aa00ff11ee"

# One request per dialect that needs the key, and the dialect's 401 shape.
PROTECTED = [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/route", {"messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/metrics", None),
    ("POST", "/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 2}),
    ("GET", "/props", None),
    ("POST", "/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}),
    ("GET", "/api/tags", None),
    ("GET", "/openapi.json", None),
    ("POST", "/v1/messages", {"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
]


def make_settings(**overrides) -> Settings:
    return Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, **overrides)


def unauthorized_shape(path: str, r: httpx.Response) -> None:
    assert r.status_code == 401, f"{path}: {r.status_code} {r.text[:200]}"
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    err = r.json()["error"]
    if path == "/" or path.startswith("/api/"):
        assert isinstance(err, str) and "API key" in err
    elif path.startswith("/v1/messages"):
        assert r.json()["type"] == "error" and err["type"] == "authentication_error"
    elif path.startswith("/v1/"):
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"
    else:
        assert set(err) == {"code", "message", "type"} and err["code"] == 401


# ----------------------------------------------------------------------------- binding


def test_binds_loopback_by_default(tmp_path):
    with isolated_env(tmp_path):
        assert load_settings().host == "127.0.0.1"
        assert Settings().api_key is None
    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert "127.0.0.1" in result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_addresses_need_no_key(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "", "0", "example.invalid"])
def test_non_loopback_bind_without_api_key_is_refused(tiny_gguf, tmp_path, host):
    with isolated_env(tmp_path):
        catalog = catalog_from_files({"fim": tiny_gguf}, n_ctx=512)
        with pytest.raises(InsecureBind, match="API key"):
            create_app(make_settings(host=host), catalog=catalog)
        create_app(make_settings(host=host, api_key=KEY), catalog=catalog)  # with a key it may


def test_non_loopback_from_the_environment_is_refused_too(tiny_gguf, tmp_path, monkeypatch):
    with isolated_env(tmp_path):
        monkeypatch.setenv("ROUTE_HOST", "0.0.0.0")
        with pytest.raises(InsecureBind):
            create_app(load_settings(n_threads=1), catalog=catalog_from_files({"fim": tiny_gguf}, n_ctx=512))


def test_route_serve_refuses_a_public_address_without_a_key_before_listening(tiny_gguf, tmp_path):
    with isolated_env(tmp_path):
        result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "0", "--model", f"fim={tiny_gguf}"])
    assert result.exit_code != 0
    assert "API key" in result.output and "0.0.0.0" in result.output
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- API key


@pytest.fixture(scope="module")
def keyed(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    with isolated_env(tmp):
        app = create_app(make_settings(api_key=KEY), catalog=catalog_from_files({"fim": tiny_gguf, "chat": tiny_gguf},
                                                                                 n_ctx=512))
        with live_server(app) as srv:
            yield srv


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("auth", [None, f"Bearer {WRONG_KEY}", KEY, f"Basic {KEY}", f"Bearer {KEY}x", "Bearer"])
def test_api_key_is_enforced_in_each_dialect(keyed, method, path, body, auth):
    headers = {"authorization": auth} if auth is not None else {}
    r = httpx.request(method, keyed.url + path, json=body, headers=headers, timeout=60)
    unauthorized_shape(path, r)
    assert WRONG_KEY not in r.text and KEY not in r.text


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_the_right_key_opens_every_dialect(keyed, method, path, body):
    r = httpx.request(method, keyed.url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_auth_scheme_is_case_insensitive_but_the_key_is_not(keyed, scheme):
    ok = httpx.get(keyed.url + "/v1/models", headers={"authorization": f"{scheme} {KEY}"}, timeout=60)
    assert ok.status_code == 200
    wrong_case_key = httpx.get(keyed.url + "/v1/models", headers={"authorization": f"{scheme} {KEY.swapcase()}"}, timeout=60)
    assert wrong_case_key.status_code == 401


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_root_probe_is_open_and_reveals_nothing(keyed, method):
    """Claude Code's connection check is `HEAD /`, sent without its key; Ollama clients GET / too."""
    r = httpx.request(method, keyed.url + "/")
    assert r.status_code == 200
    assert "tiny" not in r.text and "fim" not in r.text


def test_x_api_key_opens_every_dialect_as_bearer_does(keyed):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(keyed.url + "/v1/chat/completions", json=body, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.post(keyed.url + "/v1/chat/completions", json=body,
                      headers={"x-api-key": WRONG_KEY}).status_code == 401


def test_health_is_open_and_reveals_nothing(keyed):
    r = httpx.get(keyed.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "tiny" not in r.text and "fim" not in r.text  # no model names or paths


def test_real_clients_see_an_authentication_error(keyed):
    import ollama

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key=WRONG_KEY, max_retries=0).models.list()
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    assert good.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=keyed.url).list()
    assert caught.value.status_code == 401
    assert ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"}).list().models


# ----------------------------------------------------------------------------- CORS


@pytest.fixture(scope="module")
def cors(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cors")
    with isolated_env(tmp):
        app = create_app(make_settings(cors_origins=["http://allowed.example"]),
                         catalog=catalog_from_files({"fim": tiny_gguf, "chat": tiny_gguf}, n_ctx=512))
        with live_server(app) as srv:
            yield srv


PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,authorization"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/infill", "/api/generate"])
def test_cors_preflight_only_for_configured_origins(cors, path):
    ok = httpx.options(cors.url + path, headers={"origin": "http://allowed.example", **PREFLIGHT})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
    for origin in ("http://evil.example", "http://allowed.example.evil.example", "null", "http://allowed.example:8080"):
        bad = httpx.options(cors.url + path, headers={"origin": origin, **PREFLIGHT})
        assert "access-control-allow-origin" not in bad.headers, origin
        assert bad.status_code >= 400


def test_cors_simple_requests_from_other_origins_get_no_allow_origin(cors):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    bad = httpx.post(cors.url + "/v1/chat/completions", json=body, headers={"origin": "http://evil.example"}, timeout=60)
    assert "access-control-allow-origin" not in bad.headers
    ok = httpx.post(cors.url + "/v1/chat/completions", json=body, headers={"origin": "http://allowed.example"}, timeout=60)
    assert ok.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "x-route-model" in ok.headers["access-control-expose-headers"].lower()


def test_no_cors_unless_configured(keyed):
    r = httpx.options(keyed.url + "/v1/chat/completions", headers={"origin": "http://allowed.example", **PREFLIGHT})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(keyed.url + "/health", headers={"origin": "http://allowed.example"})
    assert "access-control-allow-origin" not in r.headers


# ----------------------------------------------------------------------------- paths and model names


def test_cli_model_path_outside_gguf_is_refused(tmp_path):
    """`--model fim=../../etc/passwd`: an existing file that is not a GGUF never reaches llama.cpp."""
    target = Path("/etc/passwd")
    if not target.is_file():
        pytest.skip("this system has no /etc/passwd to point at")
    relative = os.path.relpath(target)
    with isolated_env(tmp_path):
        result = CliRunner().invoke(cli_app, ["serve", "--model", f"fim={relative}"])
    assert result.exit_code != 0
    assert "not a GGUF" in result.output and "root:" not in result.output


@pytest.mark.parametrize("path", ["../../etc/passwd", "models/../../secret.gguf", "./../x.gguf"])
def test_catalog_relative_paths_cannot_leave_their_directory(tmp_path, path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(json.dumps({"models": [{"id": "m", "labels": ["chat"], "source": {"kind": "local", "path": path}}]}))
    with pytest.raises(CatalogError, match=r"\.\."):
        load_catalog(catalog)


def test_catalog_symlink_escaping_its_directory_is_refused(tmp_path, tiny_gguf):
    base = tmp_path / "models"
    base.mkdir()
    (base / "link.gguf").symlink_to(tiny_gguf)  # points outside `base`
    catalog = base / "catalog.yaml"
    catalog.write_text(json.dumps({"models": [{"id": "m", "labels": ["chat"], "source": {"kind": "local", "path": "link.gguf"}}]}))
    with pytest.raises(CatalogError, match="outside"):
        load_catalog(catalog)


@pytest.fixture(scope="module")
def plain(tiny_gguf, tmp_path_factory):
    """A model whose catalog path points at a non-GGUF file (the operator's mistake, or worse)."""
    tmp = tmp_path_factory.mktemp("plain")
    secret = tmp / "secret.txt"
    secret.write_text("root:x:0:0:TOP-SECRET-CONTENT\n" * 50)
    with isolated_env(tmp):
        catalog = catalog_from_files({"fim": tiny_gguf, "chat": secret}, n_ctx=512)
        with live_server(create_app(make_settings(), catalog=catalog)) as srv:
            yield srv


@pytest.mark.parametrize("name", ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "../tiny-qwen", "tiny-qwen/../../etc/passwd",
                                  "/etc/passwd", "~/.ssh/id_rsa", "C:\\Windows\\win.ini", "secret.txt"])
def test_model_names_are_catalog_ids_never_paths(plain, name):
    http = httpx.Client(base_url=plain.url, timeout=60)
    responses = [
        http.post("/api/show", json={"model": name}),
        http.post("/api/generate", json={"model": name, "prompt": "hi", "stream": False}),
        http.post("/api/chat", json={"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": False}),
        http.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}),
        http.post("/infill", json={"model": name, "input_prefix": "a", "input_suffix": "b"}),
        http.get("/props", params={"model": name}),
        http.get(f"/v1/models/{name}"),
    ]
    for r in responses:
        assert r.status_code == 404, (r.request.url, r.status_code, r.text[:200])
        assert "root:" not in r.text and "TOP-SECRET" not in r.text


def test_a_non_gguf_catalog_file_fails_to_load_without_leaking_its_content(plain):
    r = httpx.post(plain.url + "/v1/chat/completions", timeout=60,
                   json={"model": "secret", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 503 and "secret" in r.json()["error"]["message"]
    assert "TOP-SECRET" not in r.text and "root:x" not in r.text
    r = httpx.post(plain.url + "/api/show", json={"model": "secret"})
    assert "TOP-SECRET" not in r.text
    ok = httpx.post(plain.url + "/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 2}, timeout=60)
    assert ok.status_code == 200


# ----------------------------------------------------------------------------- classifier artifact


class _Payload:
    """A type on no trusted list."""

    ran = False

    def __setstate__(self, state):
        type(self).ran = True


def test_classifier_loads_only_trusted_types(tmp_path):
    import skops.io as sio

    from classifier import ArtifactError, Classifier
    from classifier.model import DEFAULT_ARTIFACT, TRUSTED_TYPES

    assert DEFAULT_ARTIFACT.is_file()
    untrusted = sio.get_untrusted_types(file=DEFAULT_ARTIFACT)
    assert set(untrusted) <= set(TRUSTED_TYPES), "the shipped artifact holds types outside the trusted list"
    assert Classifier.load() is not None

    evil = tmp_path / "evil.skops"
    sio.dump({"pipeline": _Payload(), "vocabulary": "x"}, evil)
    with pytest.raises(ArtifactError, match="untrusted"):
        Classifier.load(evil)
    assert not _Payload.ran

    # A real pickle renamed .skops is refused too, and never unpickled.
    pickled = tmp_path / "pickled.skops"
    import pickle

    pickled.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ArtifactError):
        Classifier.load(pickled)
    assert not _Payload.ran


def test_no_pickle_or_trusted_true_anywhere_in_the_loading_code():
    for folder in ("classifier", "models", "router"):
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            for pattern in (r"pickle\.loads?\(", r"joblib\.load\(", r"trusted\s*=\s*True", r"torch\.load\("):
                assert not re.search(pattern, text), f"{source.relative_to(ROOT)} uses {pattern}"


# ----------------------------------------------------------------------------- secrets in logs


def test_api_key_never_appears_in_logs(tiny_gguf, tmp_path, caplog, capfd):
    """Debug logging everywhere, uvicorn access logs on: right and wrong keys are never written."""
    caplog.set_level(logging.DEBUG)
    with isolated_env(tmp_path):
        app = create_app(make_settings(api_key=KEY, log_level="debug"),
                         catalog=catalog_from_files({"fim": tiny_gguf, "chat": tiny_gguf}, n_ctx=512))
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="debug", access_log=True, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            good = {"authorization": f"Bearer {KEY}"}
            bad = {"authorization": f"Bearer {WRONG_KEY}"}
            with httpx.Client(base_url=url, timeout=60) as http:
                assert http.post("/v1/chat/completions", headers=good, json={
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200
                with http.stream("POST", "/v1/completions", headers=good, json={
                        "prompt": "a", "max_tokens": 3, "stream": True}) as r:
                    r.read()
                assert http.post("/api/generate", headers=bad, json={"prompt": "x"}).status_code == 401
                assert http.post("/infill", headers=good, content=b"{broken").status_code == 400
                assert http.post("/v1/chat/completions", headers=good, json={"model": "nope", "messages": [
                    {"role": "user", "content": "hi"}]}).status_code == 404
                assert http.get("/metrics", headers=good).status_code == 200
                assert http.get(f"/v1/models?api_key={WRONG_KEY[:6]}", headers=bad).status_code == 401
        finally:
            server.should_exit = True
            thread.join(30)
        assert "GET /metrics" in caplog.text or "/metrics" in capfd.readouterr().err + caplog.text  # logs were on
    out, err = capfd.readouterr()
    everything = caplog.text + out + err + repr(app_state(app).settings) + str(app_state(app).settings.model_dump())
    assert KEY not in everything
    assert WRONG_KEY not in everything


def test_route_config_masks_the_api_key(tmp_path, monkeypatch):
    with isolated_env(tmp_path):
        monkeypatch.setenv("ROUTE_API_KEY", KEY)
        for args in (["config"], ["config", "--json"]):
            result = CliRunner().invoke(cli_app, args)
            assert result.exit_code == 0, result.output
            assert KEY not in result.output and "api_key" in result.output

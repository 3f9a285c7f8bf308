"""Schema-driven fuzzing of every endpoint (schemathesis over the app's own OpenAPI document).

A real uvicorn serves tiny models with a 256-token context, so any generation is short. Every
answer must be below 500 and every error must be in its dialect's shape. ROUTE_FUZZ_EXAMPLES
raises the examples per operation (the default keeps the normal test run short).
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from server_harness import isolated_env, live_server

from models.catalog import catalog_from_files
from router.app import create_app
from router.errors import LLAMACPP, OLLAMA, OPENAI, dialect_for_path
from router.settings import Settings

EXAMPLES = int(os.environ.get("ROUTE_FUZZ_EXAMPLES", "12"))
schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI writes OpenAPI 3.1


@pytest.fixture(scope="module")
def fuzz_server(tiny_gguf, tiny_gguf_nofim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with isolated_env(tmp):
        catalog = catalog_from_files(
            {"code_edit": tiny_gguf, "fim": tiny_gguf, "chat": tiny_gguf_nofim, "instruct": tiny_gguf_nofim}, n_ctx=256
        )
        app = create_app(Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, max_body_bytes=200_000), catalog=catalog)
        with live_server(app) as srv:
            yield srv


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server):
    return schemathesis.from_uri(
        fuzz_server.url + "/openapi.json",
        base_url=fuzz_server.url,
        data_generation_methods=[schemathesis.DataGenerationMethod.positive, schemathesis.DataGenerationMethod.negative],
    )


schema = schemathesis.from_pytest_fixture("fuzz_schema")


def assert_dialect_shape(path: str, body: object) -> None:
    dialect = dialect_for_path(path)
    assert isinstance(body, dict) and "error" in body, body
    err = body["error"]
    if dialect == OLLAMA:
        assert isinstance(err, str) and err
    elif dialect == OPENAI:
        assert set(err) == {"message", "type", "param", "code"}, err
    else:
        assert dialect == LLAMACPP and set(err) == {"code", "message", "type"}, err


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_5xx_and_errors_in_dialect_shape(case):
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.path, case.body, response.text[:500])
    if response.status_code >= 400:
        assert_dialect_shape(case.path, response.json())


def test_server_healthy_after_fuzzing(fuzz_server):
    assert httpx.get(fuzz_server.url + "/health").json()["status"] == "ok"
    r = httpx.post(fuzz_server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200

"""Schemathesis fuzzing of every endpoint in the app's OpenAPI schema, against a live server.

At least 1,000 generated requests (schema-valid and schema-violating bodies, query and path
parameters): no 5xx, every error in its dialect's shape, streams that end properly, and a server
that is healthy and idle afterwards. bench/fuzz.py runs the same engine for longer.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from bench_loader import load_bench

fuzz = load_bench("fuzz")

CASES_PER_OPERATION = 58  # x2 (positive, negative) over 9 POST operations, plus GETs: > 1,000 cases
GENERATING = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/infill", "/completion",
              "/api/generate", "/api/chat"]
EVERY_ENDPOINT = {
    ("post", p) for p in [*GENERATING, "/v1/messages/count_tokens", "/v1/embeddings", "/api/embed", "/api/embeddings",
                          "/api/show", "/v1/route"]
} | {
    ("get", p) for p in ["/v1/models", "/v1/models/{model_id}", "/health", "/props", "/", "/api/version",
                         "/api/tags", "/api/ps", "/metrics"]
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fuzz.tiny_server(tmp_path_factory.mktemp("fuzz")) as srv:
        yield srv


def test_every_endpoint_is_in_the_schema_and_posts_publish_their_body_model(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    published = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert EVERY_ENDPOINT <= published, f"missing from the OpenAPI schema: {EVERY_ENDPOINT - published}"
    for method, path in sorted(published):
        if method != "post":
            continue
        body = schema["paths"][path]["post"].get("requestBody")
        assert body is not None, f"POST {path} has no request body schema (fuzzers cannot reach its fields)"
        properties = body["content"]["application/json"]["schema"].get("properties", {})
        assert properties, f"POST {path}: the body schema lists no fields"
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"messages", "model", "max_tokens", "stream"} <= set(chat["properties"])
    assert "messages" in chat["required"]
    infill = schema["paths"]["/infill"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input_prefix", "input_suffix", "input_extra", "n_cmpl", "response_fields"} <= set(infill["properties"])


@pytest.mark.timeout(900)  # ~70 s of CPU; wall time stretches when the shared machine is busy
def test_fuzz_a_thousand_cases_no_5xx_and_errors_in_dialect_shape(server):
    import threading

    threads_before = {t.ident for t in threading.enumerate()}
    report = fuzz.fuzz(server.url, cases_per_operation=CASES_PER_OPERATION, seed=20261123)
    summary = json.dumps(report.as_dict(), indent=1)[:4000]
    print(summary)
    assert report.total >= 1000, summary
    covered = {name.split(" ", 1)[1] for name in report.cases}
    assert {path for _, path in EVERY_ENDPOINT} <= covered, summary
    for _, path in EVERY_ENDPOINT:
        if path in GENERATING:
            assert report.cases[f"POST {path}"] >= CASES_PER_OPERATION, summary
    assert not report.failures, summary
    assert not any(status >= 500 for status in report.statuses), summary
    assert report.statuses[200] > 50, "the fuzzer hardly ever produced a valid request: " + summary

    # healthy after: liveness, a generation per dialect, nothing left running, no threads left behind
    assert fuzz.server_problems(server.url) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status()):
            break
        time.sleep(0.05)
    assert all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status())
    assert server.state.superseder.inflight == {}
    # Expected to stay: one worker per model loaded since (the embedding model), the event loop's
    # executor threads (count_tokens, embeddings), and one the fuzzer's HTTP session may keep.
    kept = {"pool-worker-", "asyncio_"}
    new = [t.name for t in threading.enumerate() if t.ident not in threads_before
           and not any(t.name.startswith(k) for k in kept)]
    assert len(new) <= 1, new

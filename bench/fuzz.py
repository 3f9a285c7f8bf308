"""Schema-driven fuzzing of the router's HTTP API with schemathesis (3.x), against a live server.

Every operation in the app's OpenAPI document gets generated requests, both schema-valid
(positive) and schema-violating (negative). Each answer must be a non-5xx response, and every
error must come back in the dialect's own shape (OpenAI, Ollama, llama.cpp; see router/errors.py).
The server must be healthy and idle afterwards.

The normal test run uses a short version (tests/test_fuzz_schema.py, >= 1,000 cases); run this
script for a longer one:

    .venv/bin/python bench/fuzz.py --cases-per-operation 400 --seed 7

It starts its own server on 127.0.0.1 (port 0) over a tiny generated GGUF (tests/tiny_gguf.py),
or fuzzes a running router with --url. Results go to bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import unittest
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like our packages (bench/classifier.py): the project root comes first.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from router.errors import dialect_for_path  # noqa: E402  the rule the server answers errors by

# Server errors that are part of the contract, not crashes: none are expected with the fuzz
# catalog (every model FIM-capable, sequential requests, so no full queues).
ALLOWED_5XX: frozenset[int] = frozenset()


def error_shape_problem(path: str, status: int, body: Any) -> str | None:
    """Why `body` is not a `status` error in the dialect of `path`, or None when it is."""
    dialect = dialect_for_path(path)
    if not isinstance(body, dict) or "error" not in body:
        return f"{dialect} error body without an `error` key: {str(body)[:200]}"
    err = body["error"]
    if dialect == "ollama":
        if not isinstance(err, str) or not err:
            return f"ollama error must be a non-empty string, got {err!r:.200}"
        return None
    if not isinstance(err, dict):
        return f"{dialect} error must be an object, got {err!r:.200}"
    if dialect == "anthropic":
        if body.get("type") != "error" or set(err) != {"type", "message"} or not err["message"]:
            return f"anthropic error must be {{type: error, error: {{type, message}}}}, got {body!r:.200}"
        return None
    if dialect == "openai":
        if set(err) != {"message", "type", "param", "code"}:
            return f"openai error keys {sorted(err)} != [code, message, param, type]"
        if not isinstance(err["message"], str) or not err["message"] or not isinstance(err["type"], str):
            return f"openai error message/type not strings: {err!r:.200}"
        return None
    if set(err) != {"code", "message", "type"}:
        return f"llama.cpp error keys {sorted(err)} != [code, message, type]"
    if err["code"] != status or not isinstance(err["message"], str) or not err["message"]:
        return f"llama.cpp error code {err['code']!r} != HTTP {status}, or empty message"
    return None


def stream_problem(path: str, content_type: str, text: str) -> str | None:
    """A 200 stream must end properly and carry no error event (a mid-stream failure)."""
    if content_type.startswith("text/event-stream"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if not events:
            return "empty SSE stream"
        for raw in events:
            if raw == "[DONE]":
                continue
            obj = json.loads(raw)
            if isinstance(obj, dict) and "error" in obj:
                return f"error event inside a 200 stream: {raw[:200]}"
        dialect = dialect_for_path(path)
        last = events[-1] if events[-1] == "[DONE]" else json.loads(events[-1])
        if path == "/v1/responses":
            if last.get("type") != "response.completed":
                return "Responses stream does not end with response.completed"
        elif dialect == "anthropic":
            if last.get("type") != "message_stop":
                return "Anthropic stream does not end with message_stop"
        elif dialect == "openai" and events[-1] != "[DONE]":
            return "OpenAI stream does not end with [DONE]"
        elif dialect == "llamacpp" and json.loads(events[-1]).get("stop") is not True:
            return "llama.cpp stream does not end with stop: true"
        return None
    if content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not lines or not lines[-1].get("done"):
            return "NDJSON stream does not end with done: true"
        if any("error" in obj for obj in lines):
            return "error line inside a 200 NDJSON stream"
    return None


@dataclass
class FuzzReport:
    """What a fuzz run did: cases per operation, statuses seen, and every failure with its request."""

    cases: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_cases": self.total,
            "seconds": round(self.seconds, 2),
            "cases_per_operation": dict(self.cases),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": self.failures[:50],
            "n_failures": len(self.failures),
        }


def check_response(case: Any, response: Any) -> str | None:
    """The fuzz oracle for one request/response pair."""
    status = response.status_code
    path = case.operation.path
    if status >= 500 and status not in ALLOWED_5XX:
        return f"server error {status}: {response.text[:300]}"
    content_type = response.headers.get("content-type", "")
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{status} error that is not JSON: {response.text[:200]}"
        return error_shape_problem(path, status, body)
    if status == 200:
        return stream_problem(path, content_type, response.text)
    return None


def fuzz(base_url: str, *, cases_per_operation: int, seed: int = 0, negative: bool = True,
         timeout_s: float = 60.0, headers: dict[str, str] | None = None) -> FuzzReport:
    """Fuzz every operation of the live server's OpenAPI schema; failures are collected, not raised."""
    import hypothesis
    import requests
    import schemathesis
    import schemathesis.utils
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import DataGenerationMethod, GenerationConfig

    methods = [DataGenerationMethod.positive] + ([DataGenerationMethod.negative] if negative else [])
    schema = schemathesis.from_uri(
        base_url + "/openapi.json", base_url=base_url, data_generation_methods=methods,
        force_schema_version="30",  # FastAPI writes 3.1; schemathesis 3.x generates from it when told
        # NUL bytes are allowed in generated strings: the router must refuse them cleanly.
        generation_config=GenerationConfig(allow_x00=True),
    )
    report = FuzzReport()
    session = requests.Session()
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        name = operation.verbose_name
        for method in methods:
            strategy = operation.as_strategy(data_generation_method=method)

            @settings(
                max_examples=cases_per_operation, deadline=None, database=None, derandomize=False,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failing input as sent
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.seed(seed)
            @given(case=strategy)
            def run(case: Any) -> None:
                try:
                    response = case.call(session=session, timeout=timeout_s, headers=headers)
                except requests.RequestException as exc:
                    problem, status = f"transport failure: {type(exc).__name__}: {exc}", 0
                else:
                    problem, status = check_response(case, response), response.status_code
                report.cases[name] += 1
                report.statuses[status] += 1
                if problem is not None:
                    report.failures.append({
                        "operation": name, "method": method.name, "problem": problem,
                        "body": _printable(getattr(case, "body", None)),
                        "query": _printable(getattr(case, "query", None)),
                        "path_parameters": _printable(getattr(case, "path_parameters", None)),
                    })

            try:
                run()
            except (hypothesis.errors.Unsatisfiable, unittest.SkipTest, schemathesis.utils.SkipTest):
                pass  # negative generation impossible for this operation (nothing to break)
    report.seconds = time.perf_counter() - started
    return report


def _printable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:500]


def server_problems(base_url: str) -> list[str]:
    """After fuzzing: /health ok and a plain generation in each dialect still answers 200."""
    import httpx

    problems = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        if client.get("/health").json().get("status") != "ok":
            problems.append("/health is not ok")
        probes = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
            ("/v1/completions", {"prompt": "a", "suffix": "b", "max_tokens": 2}),
            ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 2}),
            ("/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}),
        ]
        for path, body in probes:
            r = client.post(path, json=body)
            if r.status_code != 200:
                problems.append(f"{path} answered {r.status_code} after fuzzing: {r.text[:200]}")
    return problems


@contextmanager
def tiny_server(tmp: Path, n_ctx: int = 128) -> Iterator[Any]:
    """A live router over one tiny FIM-capable GGUF serving every label (and embeddings), isolated from user config."""
    from server_harness import isolated_env, live_server
    from tiny_gguf import write_tiny_gguf

    from models.catalog import Catalog, ModelSpec, catalog_from_files
    from router.app import create_app
    from router.settings import Settings

    gguf = write_tiny_gguf(tmp / "tiny-fuzz.gguf", fim_family="qwen", n_ctx=max(512, n_ctx))
    labels = {label: gguf for label in ("code_edit", "fim", "chat", "instruct")}
    with isolated_env(tmp):
        settings = Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, max_body_bytes=1_000_000, queue_size=64)
        catalog = catalog_from_files(labels, n_ctx=n_ctx)
        embedder = ModelSpec(id="tiny-fuzz-embed", embedding=True, pooling="mean", n_ctx=n_ctx,
                             source={"kind": "local", "path": gguf})
        catalog = Catalog(models=[*catalog.models, embedder])
        with live_server(create_app(settings, catalog=catalog)) as server:
            yield server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases-per-operation", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="Fuzz this running router instead of starting one.")
    parser.add_argument("--positive-only", action="store_true", help="Only schema-valid requests.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = parser.parse_args()

    import tempfile
    from contextlib import nullcontext

    with tempfile.TemporaryDirectory() as tmp:
        ctx = nullcontext(None) if args.url else tiny_server(Path(tmp))
        with ctx as server:
            url = args.url or server.url
            report = fuzz(url, cases_per_operation=args.cases_per_operation, seed=args.seed,
                          negative=not args.positive_only)
            after = server_problems(url)
    print(f"{'operation':<36} {'cases':>7}")
    for name, n in sorted(report.cases.items()):
        print(f"{name:<36} {n:>7}")
    print(f"{'total':<36} {report.total:>7}   in {report.seconds:.1f} s")
    print("statuses:", dict(sorted(report.statuses.items())))
    for failure in report.failures[:20]:
        print("FAIL", failure["operation"], failure["problem"], json.dumps(failure["body"])[:300])
    for problem in after:
        print("AFTER", problem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report.as_dict(), "after": after, "seed": args.seed}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if report.failures or after else 0


if __name__ == "__main__":
    sys.exit(main())

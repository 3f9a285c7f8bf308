"""The spine's rules, checked on the source: imports flow one way, and one parse per request.

DESIGN.md: `router` -> `models`, `classifier`; `models` never imports `classifier` or `router`;
`classifier` reads only models' shared vocabulary (the internal Request, the labels, the FIM
table, the errors). Only the dialect adapters read a raw request body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from classifier import Classifier
from models.catalog import catalog_from_files
from router.routing import Router

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER_MAY_IMPORT = {"models.request", "models.labels", "models.fim", "models.errors"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["models", "classifier"])
def test_models_and_classifier_never_import_router(package):
    offenders = {str(p.relative_to(ROOT)): n for p in modules(package) for n in imported(p) if n.split(".")[0] == "router"}
    assert offenders == {}


def test_models_never_import_the_classifier():
    offenders = {str(p.relative_to(ROOT)): n for p in modules("models") for n in imported(p) if n.split(".")[0] == "classifier"}
    assert offenders == {}


def test_the_classifier_reads_only_the_shared_vocabulary_of_models():
    used = {n for p in modules("classifier") for n in imported(p) if n.split(".")[0] == "models"}
    assert used and used <= CLASSIFIER_MAY_IMPORT, used - CLASSIFIER_MAY_IMPORT


def body_reads(path: Path) -> list[str]:
    """Calls that read an HTTP request's body: request.body() / .json() / .form() / .stream(), read_json()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in {"body", "json", "form", "stream"} \
                and isinstance(func.value, ast.Name) and func.value.id == "request":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} request.{func.attr}()")
        if isinstance(func, ast.Name) and func.id == "read_json":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} read_json()")
    return found


def test_only_the_dialect_adapters_read_a_raw_request_body():
    everything = [hit for package in ("router", "models", "classifier") for p in modules(package) for hit in body_reads(p)]
    outside = [hit for hit in everything if not hit.startswith("router/dialects/")]
    assert everything, "the scan found no body read at all: it no longer sees the adapters' reads"
    assert outside == []
    # The one raw read is in body.py; every other adapter module goes through read_json.
    raw = [hit for hit in everything if "request.body()" in hit]
    assert [hit.split(":")[0] for hit in raw] == ["router/dialects/body.py"]


def test_downstream_of_the_adapters_a_raw_body_is_refused(tiny_gguf):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(TypeError, match="models.request.Request"):
        Classifier.shape_only().classify(body)  # type: ignore[arg-type]
    router = Router(catalog_from_files({"chat": tiny_gguf}), Classifier.shape_only())
    with pytest.raises((TypeError, AttributeError)):
        router.route(body)  # type: ignore[arg-type]

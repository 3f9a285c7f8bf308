"""Evaluation on request-shaped JSONL (`{"endpoint", "body", "label"}` a line): per-label
precision/recall/F1, macro-F1, confusion matrix and warm in-process latency per request.

Bodies are parsed by the caller's `parse` (the router's dialect adapters, `route eval` passes
them), so evaluation reads requests by the very rules serving does. Latency is the classifier's
own: parsing is the adapters' cost, paid the same with or without routing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from classifier.agent_data import expand_line, load_templates
from classifier.classify import Classifier
from classifier.errors import InvalidRequestShape
from models.errors import RouterError
from models.labels import LABELS, Label
from models.request import Request

WARMUP_REQUESTS = 20
# (endpoint, body) -> the internal Request; raises RouterError for a body its adapter refuses.
Parse = Callable[[str, dict], Request]


@dataclass(frozen=True, slots=True)
class EvalItem:
    line: int
    request: Request
    label: Label
    source: str = ""


@dataclass(slots=True)
class EvalReport:
    n: int
    macro_f1: float
    per_label: dict[str, dict[str, float]]
    confusion: dict[str, Any]
    latency_ms: dict[str, float]
    cpu_ms: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "macro_f1": self.macro_f1,
            "per_label": self.per_label,
            "latency_ms": self.latency_ms,
            "cpu_ms": self.cpu_ms,
            "confusion": self.confusion,
            "skipped": [{"line": line, "error": error} for line, error in self.skipped],
        }


def read_eval_file(path: Path, parse: Parse) -> tuple[list[EvalItem], list[tuple[int, str]]]:
    """Parse an eval file; a line that cannot be read is reported (line number, why), not fatal."""
    items: list[EvalItem] = []
    skipped: list[tuple[int, str]] = []
    templates: dict | None = None  # agent templates (classifier/agent_data.py), read on first use
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                skipped.append((number, f"not JSON ({exc.msg} at column {exc.colno})"))
                continue
            if isinstance(obj, dict) and isinstance(obj.get("template"), str):
                templates = load_templates() if templates is None else templates
                if obj["template"] not in templates or not isinstance(obj.get("prompt"), str):
                    skipped.append((number, f"unknown agent template {obj['template']!r} or no `prompt`"))
                    continue
                obj = expand_line(obj, templates)
            problem = _line_problem(obj)
            if problem:
                skipped.append((number, problem))
                continue
            try:
                request = parse(obj["endpoint"], obj["body"])
            except RouterError as exc:
                skipped.append((number, f"invalid request: {exc.message}"))
                continue
            items.append(EvalItem(number, request, Label(obj["label"]), str(obj.get("source", ""))))
    return items, skipped


def _line_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    if not isinstance(obj.get("endpoint"), str):
        return "missing string `endpoint`"
    if not isinstance(obj.get("body"), dict):
        return "missing object `body`"
    if obj.get("label") not in {label.value for label in LABELS}:
        return f"`label` must be one of {', '.join(label.value for label in LABELS)}, got {obj.get('label')!r}"
    return None


def evaluate(classifier: Classifier, items: Iterable[EvalItem], skipped: list[tuple[int, str]] | None = None) -> EvalReport:
    """Classify every item (after a short warm-up), time each call, and score the labels."""
    items = list(items)
    skipped = list(skipped or [])
    for item in items[:WARMUP_REQUESTS]:
        try:
            classifier.classify(item.request)
        except InvalidRequestShape:
            pass
    truth: list[str] = []
    predicted: list[str] = []
    latencies: list[float] = []
    cpu: list[float] = []
    clock, cpu_clock = time.perf_counter, time.thread_time
    for item in items:
        start, cpu_start = clock(), cpu_clock()
        try:
            decision = classifier.classify(item.request)
        except InvalidRequestShape as exc:
            skipped.append((item.line, f"invalid request: {exc}"))
            continue
        cpu.append((cpu_clock() - cpu_start) * 1000.0)
        latencies.append((clock() - start) * 1000.0)
        truth.append(item.label.value)
        predicted.append(decision.label.value)
    report = score(truth, predicted, latencies, sorted(skipped))
    report.cpu_ms = _percentiles(cpu)
    return report


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    """p50/p99 in ms. Wall-clock on a shared machine includes preemption; CPU time does not."""
    if not values_ms:
        return {"p50": 0.0, "p99": 0.0}
    return {"p50": float(np.percentile(values_ms, 50)), "p99": float(np.percentile(values_ms, 99))}


def evaluate_file(classifier: Classifier, path: Path, parse: Parse) -> EvalReport:
    items, skipped = read_eval_file(path, parse)
    return evaluate(classifier, items, skipped)


def score(truth: list[str], predicted: list[str], latencies_ms: list[float], skipped=()) -> EvalReport:
    """Metrics over the labels that occur in the truth or the predictions."""
    labels = [label.value for label in LABELS if label.value in set(truth) | set(predicted)]
    if not truth:
        return EvalReport(0, 0.0, {}, {"labels": [], "matrix": []}, _percentiles([]), skipped=list(skipped))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    per_label = {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    }
    present = [label for label in labels if per_label[label]["support"] > 0]
    macro = float(np.mean([per_label[label]["f1"] for label in present])) if present else 0.0
    matrix = confusion_matrix(truth, predicted, labels=labels).tolist()
    latency = _percentiles(latencies_ms)
    return EvalReport(len(truth), macro, per_label, {"labels": labels, "matrix": matrix}, latency, skipped=list(skipped))

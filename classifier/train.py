"""`route train`: rebuild the text model from the shipped data, reproducibly (fixed seed), score it
on the held-out dev set, and persist it with skops."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import sklearn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from classifier.agent_data import expand_line, load_templates
from classifier.classify import Classifier
from classifier.dataset import DATA_DIR, GENERIC_SYSTEM_PROMPTS
from classifier.errors import InvalidRequestShape
from classifier.evaluate import EvalReport, Parse, evaluate_file
from classifier.features import compose_document
from classifier.model import CODE, DEFAULT_ARTIFACT, OTHER, TextModel, build_pipeline
from classifier.request_view import read_request
from models.labels import Label

TRAIN_FILE = DATA_DIR / "train.jsonl"
DEV_FILE = DATA_DIR / "dev.jsonl"
HARD_DEV_FILE = DATA_DIR / "dev_hard.jsonl"
SYSTEM_PROMPT_RATE = 0.3
# Rows written or captured for the ways real users and agents phrase requests weigh more than the
# templated benchmark rows that dominate by count.
SOURCE_WEIGHTS = {"handwritten": 4.0, "agent_captures": 4.0}


def row_weight(source: str) -> float:
    return next((w for prefix, w in SOURCE_WEIGHTS.items() if source.startswith(prefix)), 1.0)  # share of rows given a generic system prompt, as real clients often send one


@dataclass(frozen=True, slots=True)
class TrainResult:
    artifact: Path
    n_train: int
    n_features: int
    dev: EvalReport | None


def training_documents(rows: list[dict], seed: int, parse: Parse) -> tuple[list[str], list[str]]:
    """Each row parsed and read exactly as a live /v1/chat/completions request is, so train == serve."""
    rng = random.Random(seed)
    documents, targets = [], []
    templates = None
    for row in rows:
        if "template" in row:  # an agent capture: the body its CLI sent, read through its own dialect
            templates = load_templates() if templates is None else templates
            view = read_request(parse(row["endpoint"], expand_line(row, templates)["body"]))
            documents.append(compose_document(view.current, view.context))
            targets.append(CODE if row["label"] == Label.code_edit.value else OTHER)
            continue
        messages = row["messages"]
        if rng.random() < SYSTEM_PROMPT_RATE:
            messages = [{"role": "system", "content": rng.choice(GENERIC_SYSTEM_PROMPTS)}] + messages
        view = read_request(parse("/v1/chat/completions", {"messages": messages}))
        documents.append(compose_document(view.current, view.context))
        targets.append(CODE if row["label"] == Label.code_edit.value else OTHER)
    return documents, targets


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("label") not in {l.value for l in Label} or not (
                isinstance(row.get("messages"), list) or isinstance(row.get("template"), str)
            ):
                raise InvalidRequestShape(f"line {number}: needs `label` and `messages` (or an agent `template`)", str(path))
            rows.append(row)
    return rows


def train(
    parse: Parse,
    out: Path = DEFAULT_ARTIFACT,
    data: Path = TRAIN_FILE,
    dev: Path | None = DEV_FILE,
    seed: int = 0,
    progress: bool = True,
    console: Console | None = None,
) -> TrainResult:
    """Fit, evaluate on `dev` (held-out sources), save to `out`; same inputs + seed -> same model.

    `parse` turns (endpoint, body) into the internal Request: the router's dialect adapters."""
    console = console or Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("reading training data", total=1)
        rows = _read_rows(Path(data))
        digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()
        bar.update(task, completed=1)

        task = bar.add_task("reading rows as requests", total=len(rows))
        documents, targets = [], []
        rng_seed = seed
        for start in range(0, len(rows), 256):
            chunk_docs, chunk_targets = training_documents(rows[start : start + 256], rng_seed + start, parse)
            documents += chunk_docs
            targets += chunk_targets
            bar.advance(task, len(chunk_docs))

        task = bar.add_task("fitting TF-IDF + logistic regression", total=1)
        pipeline = build_pipeline(seed)
        pipeline.fit(documents, targets, logreg__sample_weight=[row_weight(row.get("source", "")) for row in rows])
        bar.update(task, completed=1)

        meta = {
            "seed": seed,
            "n_train": len(rows),
            "train_sha256": digest,
            "sklearn": sklearn.__version__,
        }
        model = TextModel(pipeline, meta)
        report = None
        if dev is not None and Path(dev).is_file():
            task = bar.add_task("evaluating on held-out dev requests", total=1)
            report = evaluate_file(Classifier(model), Path(dev), parse)
            model.meta["dev"] = {"n": report.n, "macro_f1": round(report.macro_f1, 4)}
            bar.update(task, completed=1)

        task = bar.add_task(f"saving {Path(out).name}", total=1)
        model.save(Path(out))
        bar.update(task, completed=1)
    return TrainResult(Path(out), len(rows), len(model.vocabulary_), report)

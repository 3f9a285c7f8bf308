"""The classifier decides exactly as before the one-parse refactor, on a fixed sample of the dev set.

tests/data/dev_decisions.jsonl holds every 5th line of classifier/data/dev.jsonl with the label and
confidence the classifier gave it (first recorded when bodies were still read by the classifier
itself, commit 1e44def; re-recorded when the artifact was retrained for issue 16). A refactor that
moves a decision fails here; a retrain re-records the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier import Classifier
from classifier.train import DEV_FILE
from router.dialects.endpoints import parse_request

RECORDED = Path(__file__).parent / "data" / "dev_decisions.jsonl"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def test_decisions_on_the_dev_sample_are_unchanged(classifier):
    dev = DEV_FILE.read_text(encoding="utf-8").splitlines()
    recorded = [json.loads(line) for line in RECORDED.read_text(encoding="utf-8").splitlines()]
    assert len(recorded) > 1000
    moved = []
    for rec in recorded:
        row = json.loads(dev[rec["line"]])
        decision = classifier.classify(parse_request(row["endpoint"], row["body"]))
        now = {"line": rec["line"], "label": decision.label.value, "confidence": round(decision.confidence, 6)}
        if now != rec:
            moved.append((rec, now))
    assert moved == [], f"{len(moved)} of {len(recorded)} decisions moved, e.g. {moved[:3]}"

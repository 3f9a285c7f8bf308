"""The harder dev set (classifier/data/dev_hard.jsonl): agent requests the real CLIs sent and
project-authored hard cases, whole sources never trained on. Floors guard against regressions;
the issue-16 targets are asserted too, strict xfail until they are reached."""

from __future__ import annotations

import json
import time

import pytest

from classifier import Classifier
from classifier.agent_data import expand, load_templates
from classifier.dataset import DATA_DIR, HARD_DEV_SOURCES
from classifier.evaluate import evaluate, read_eval_file
from classifier.train import HARD_DEV_FILE, TRAIN_FILE
from router.dialects.endpoints import parse_request

AGENT_TEMPLATES = {  # the CLIs' own request shapes, one per settings variant
    "claude/default-tools/main": "/v1/messages",
    "claude/coding-tools/main": "/v1/messages",
    "codex/auto-model/main": "/v1/responses",
    "codex/default-model/main": "/v1/responses",
    "opencode/default/main": "/v1/chat/completions",
    "qwen/yolo/main": "/v1/chat/completions",
}


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


@pytest.fixture(scope="module")
def report(classifier):
    items, skipped = read_eval_file(HARD_DEV_FILE, parse_request)
    assert skipped == []
    return evaluate(classifier, items)


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_hard_dev_sources_and_prompts_never_appear_in_training():
    train = _rows(TRAIN_FILE)
    assert not {row["source"] for row in train} & HARD_DEV_SOURCES
    trained = {row.get("prompt") or row["messages"][-1]["content"] for row in train}
    for line in _rows(HARD_DEV_FILE):
        prompt = line.get("prompt") or line["body"].get("prompt")
        assert prompt is None or prompt not in trained, prompt


def test_hard_dev_covers_the_six_dialects_and_every_cli():
    lines = _rows(HARD_DEV_FILE)
    assert {"/v1/chat/completions", "/api/chat", "/v1/messages", "/v1/responses", "/v1/completions",
            "/completion", "/api/generate"} <= {line["endpoint"] for line in lines}
    assert {line.get("cli") for line in lines} >= {"claude", "codex", "opencode", "qwen"}


def test_hard_dev_floors(report):
    """Where the classifier stands today (macro 0.83, code_edit 0.73): a drop below fails."""
    assert report.macro_f1 >= 0.82
    assert report.per_label["code_edit"]["f1"] >= 0.72


@pytest.mark.xfail(strict=True, reason="issue 16 targets not reached yet: code questions without code")
def test_hard_dev_targets(report):
    assert report.macro_f1 >= 0.97
    assert report.per_label["code_edit"]["f1"] >= 0.95


def test_agent_captures_per_cli(classifier):
    items, _ = read_eval_file(HARD_DEV_FILE, parse_request)
    lines = _rows(HARD_DEV_FILE)
    by_cli: dict[str, list[bool]] = {}
    for item in items:
        line = lines[item.line - 1]
        if line.get("cli"):
            by_cli.setdefault(line["cli"], []).append(classifier.classify(item.request).label == item.label)
    for cli, hits in by_cli.items():
        assert sum(hits) / len(hits) >= 0.9, (cli, sum(hits), len(hits))


@pytest.mark.parametrize("template", sorted(AGENT_TEMPLATES))
@pytest.mark.parametrize("prompt, label", [
    ("create a file hello.py that prints hello", "code_edit"),
    ("fix the failing test in tests/test_parser.py", "code_edit"),
    ("what is the capital of Australia?", "instruct"),
    ("write a haiku about the first snow of winter", "instruct"),
])
def test_agent_requests_route_by_the_users_intent(classifier, template, prompt, label):
    """Tools, a huge system prompt, reminders and qwen-code's invented exchange do not decide."""
    body = expand(load_templates()[template], prompt)
    assert classifier.classify(parse_request(AGENT_TEMPLATES[template], body)).label.value == label


@pytest.mark.parametrize("prompt", ["create a file hello.py that prints hello", "what is the capital of Australia?"])
def test_opencode_title_request_is_a_side_request(classifier, prompt):
    body = expand(load_templates()["opencode/default/side"], prompt)
    decision = classifier.classify(parse_request("/v1/chat/completions", body))
    assert decision.label.value == "instruct" and "side request" in decision.reasons[0]


@pytest.mark.parametrize("template", sorted(AGENT_TEMPLATES))
def test_one_megabyte_agent_request_within_a_millisecond(classifier, template):
    """p99 CPU time per classification of a 1 MB agent request (a pasted file in the prompt)."""
    prompt = "fix the bug in main.py\n" + "def f(x):\n    return x\n" * 40_000
    request = parse_request(AGENT_TEMPLATES[template], expand(load_templates()[template], prompt))
    times = []
    for _ in range(200):
        start = time.thread_time()
        classifier.classify(request)
        times.append(time.thread_time() - start)
    times.sort()
    assert times[int(len(times) * 0.99) - 1] <= 0.001


def test_templates_are_documented():
    assert "agent_captures" in (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")

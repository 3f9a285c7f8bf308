"""`route classify / explain / eval / train`, registered onto a local Typer app and run by CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from classifier.train import TRAIN_FILE
from router.cli_classifier import register


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()

    @application.callback()
    def root() -> None:
        """Test app."""

    register(application)
    return application


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def write_eval(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


EVAL_LINES = [
    json.dumps({"endpoint": "/infill", "body": {"input_prefix": "def f(", "input_suffix": ")"}, "label": "fim"}),
    json.dumps({"endpoint": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "fix this bug: print('a' + 1)"}]}, "label": "code_edit"}),
    "{this is not json",
    json.dumps({"endpoint": "/api/chat", "body": {"messages": [{"role": "user", "content": "What is the capital of Peru?"}]}, "label": "instruct"}),
    json.dumps({"endpoint": "/api/chat", "body": {"messages": []}, "label": "chat"}),
    json.dumps({"endpoint": "/completion", "body": {"prompt": "hello"}, "label": "banana"}),
    json.dumps(
        {
            "endpoint": "/api/chat",
            "body": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "tell me a joke about cats"}]},
            "label": "chat",
        }
    ),
]


def test_classify_prompt(app, runner):
    result = runner.invoke(app, ["classify", "write a python function that reverses a string"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[0] == "code_edit"


def test_classify_json(app, runner):
    result = runner.invoke(app, ["classify", "--json", "Give me a recipe for pancakes"])
    decision = json.loads(result.stdout)
    assert decision["label"] == "instruct" and 0.5 <= decision["confidence"] <= 1 and decision["reasons"]


def test_classify_request_file(app, runner, tmp_path):
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"endpoint": "/v1/completions", "body": {"prompt": "def f(x):", "suffix": "\n    return y"}}))
    result = runner.invoke(app, ["classify", "--request", str(request)])
    assert result.exit_code == 0
    assert result.stdout.startswith("fim")


def test_explain_shows_reasons_and_budget(app, runner):
    result = runner.invoke(app, ["explain", "can you refactor this into smaller functions?\ndef main():\n    a()\n    b()"])
    assert result.exit_code == 0
    out = result.stdout
    assert "code_edit" in out and "reasons" in out and "top features" in out and "characters (bounded)" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["classify"], "nothing to classify"),
        (["classify", "--request", "/nonexistent/req.json"], "request file not found"),
        (["classify", "x", "--request", "/nonexistent/req.json"], "not both"),
        (["classify", "--endpoint", "/v2/what", "hello"], "`endpoint` must be one of"),
        (["classify", "--artifact", "/nonexistent/a.skops", "hello"], "not found"),
        (["eval", "/nonexistent/dev.jsonl"], "eval file not found"),
    ],
)
def test_errors_are_one_clear_line(app, runner, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert result.stderr.splitlines()[0].startswith("error:")


def test_bad_request_file_contents(app, runner, tmp_path):
    not_json = tmp_path / "bad.json"
    not_json.write_text("{oops")
    result = runner.invoke(app, ["classify", "--request", str(not_json)])
    assert result.exit_code == 2 and "is not JSON" in result.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"endpoint": "/api/chat", "body": {"messages": "hi"}}))
    result = runner.invoke(app, ["classify", "--request", str(wrong)])
    assert result.exit_code == 2 and "Invalid value for `messages`" in result.stderr


def test_eval_text(app, runner, tmp_path):
    path = write_eval(tmp_path / "dev.jsonl", EVAL_LINES)
    result = runner.invoke(app, ["eval", str(path)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("precision", "recall", "F1", "macro", "confusion", "p50", "p99", "code_edit", "fim", "instruct", "chat"):
        assert word in out
    assert "skipped line 3: not JSON" in result.stderr
    assert "skipped line 5: invalid request" in result.stderr
    assert "skipped line 6: `label` must be one of" in result.stderr


def test_eval_json(app, runner, tmp_path):
    path = write_eval(tmp_path / "dev.jsonl", EVAL_LINES)
    result = runner.invoke(app, ["eval", str(path), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert {"n", "macro_f1", "per_label", "latency_ms", "confusion"} <= set(report)
    assert report["n"] == 4
    assert set(report["per_label"]) == {"fim", "code_edit", "instruct", "chat"}
    for metrics in report["per_label"].values():
        assert set(metrics) == {"precision", "recall", "f1", "support"}
    assert report["per_label"]["fim"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert report["macro_f1"] == pytest.approx(sum(m["f1"] for m in report["per_label"].values()) / 4)
    assert sum(map(sum, report["confusion"]["matrix"])) == 4
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p99"] >= report["latency_ms"]["p50"]
    assert [s["line"] for s in report["skipped"]] == [3, 5, 6]


def test_train_writes_a_loadable_artifact(app, runner, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(TRAIN_FILE.read_text(encoding="utf-8").splitlines()[::20]) + "\n")
    dev = write_eval(tmp_path / "dev.jsonl", EVAL_LINES)
    out = tmp_path / "model.skops"
    result = runner.invoke(app, ["train", "--data", str(data), "--dev", str(dev), "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote" in result.stdout and "macro-F1" in result.stdout
    assert "fitting" in result.stderr  # the progress display
    result = runner.invoke(app, ["classify", "--artifact", str(out), "--json", "fix my function: def f(: pass"])
    assert result.exit_code == 0 and json.loads(result.stdout)["label"] in {"code_edit", "instruct"}


def test_train_missing_data(app, runner, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "m.skops")])
    assert result.exit_code == 2 and "training data not found" in result.stderr

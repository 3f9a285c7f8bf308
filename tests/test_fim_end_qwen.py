"""The router's end of the middle on the real Qwen2.5-Coder-0.5B-Instruct: a known run-on answer is cut.

HumanEval-SingleLineInfilling HumanEval/0/L4 (the line `if distance < threshold:`): left alone,
Qwen writes the line, then the suffix's `return True` again, then `return False`, then test code
(bench/fim.py saw it). Through Ollama's /api/generate (Continue's FIM request) the router must
stream just the line and stop generating right after it; with `fim_trim: false` the run-on is back.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.qwen

DATA = Path("/work/shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz")
TASK = "SingleLineInfilling/HumanEval/0/L4"
LINE = "                if distance < threshold:\n"


@pytest.fixture(scope="module")
def task() -> dict:
    if not DATA.is_file():
        pytest.skip(f"HumanEval infilling data not at {DATA}")
    with gzip.open(DATA, "rt") as f:
        return next(row for row in map(json.loads, f) if row["task_id"] == TASK)


@pytest.mark.timeout(300)
def test_a_run_on_fim_answer_is_cut_where_the_hole_ends(qwen_server, task):
    body = {"model": "auto", "prompt": task["prompt"], "suffix": task["suffix"], "stream": True,
            "options": {"num_predict": 64, "temperature": 0}}
    with httpx.stream("POST", qwen_server.url + "/api/generate", json=body, timeout=300) as response:
        assert response.status_code == 200 and response.headers["x-route-label"] == "fim"
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert "".join(c["response"] for c in chunks) == LINE  # nothing past the hole was ever sent
    final = chunks[-1]
    assert final["done"] and final["done_reason"] == "stop"
    assert final["eval_count"] < 20  # generation stopped at the repeat, not at num_predict

    whole = httpx.post(qwen_server.url + "/infill", timeout=300, json={
        "input_prefix": task["prompt"], "input_suffix": task["suffix"], "prompt": "", "n_predict": 64,
        "temperature": 0, "fim_trim": False}).json()
    assert whole["content"].startswith(LINE + "                    return True")  # the run-on, untouched
    cut = httpx.post(qwen_server.url + "/infill", timeout=300, json={
        "input_prefix": task["prompt"], "input_suffix": task["suffix"], "prompt": "", "n_predict": 64,
        "temperature": 0}).json()
    assert cut["content"] == LINE and cut["stop_type"] == "word"
    assert cut["stopping_word"] == "                    return True"

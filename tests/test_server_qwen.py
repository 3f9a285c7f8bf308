"""The router with the real Qwen2.5-Coder-0.5B-Instruct: routed code and FIM requests make sense.

Marked `qwen`; skipped (saying why) where the weights are not in the HF cache.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest

pytestmark = pytest.mark.qwen

FIM_PROBLEMS = Path("/work/shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz")


def passes(program: str) -> bool:
    try:
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return run.returncode == 0


@pytest.mark.timeout(600)
def test_routed_code_request_writes_working_code(qwen_server):
    client = openai.OpenAI(base_url=qwen_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a Python function `is_even(n)` that returns True when the "
                                              "integer n is even and False otherwise. Reply with one code block."}],
        max_tokens=120, temperature=0,
    )
    assert raw.headers["x-route-label"] == "code_edit"
    assert raw.headers["x-route-model"] == qwen_server.state.catalog.models[0].id
    text = raw.parse().choices[0].message.content
    block = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    code = block.group(1) if block else text
    assert "def is_even" in code
    assert passes(code + "\nassert is_even(4) is True and is_even(7) is False\n")


@pytest.mark.timeout(900)
def test_routed_fim_in_every_dialect_passes_humaneval_infilling(qwen_server):
    rows = [json.loads(line) for line in gzip.open(FIM_PROBLEMS, "rt")]
    # The first line-infilling task of each of 6 problems; a middle is one line, so generation stops at "\n".
    picked, seen = [], set()
    for row in rows:
        problem = row["task_id"].split("/")[2]
        if problem not in seen:
            seen.add(problem)
            picked.append(row)
        if len(picked) == 6:
            break
    oai = openai.OpenAI(base_url=qwen_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    oll = ollama.Client(host=qwen_server.url, timeout=300)
    results = []
    for i, row in enumerate(picked):
        dialect = ("infill", "openai", "ollama")[i % 3]
        if dialect == "infill":
            r = httpx.post(qwen_server.url + "/infill", timeout=300, json={
                "input_prefix": row["prompt"], "input_suffix": row["suffix"], "input_extra": [], "prompt": "",
                "n_predict": 32, "stop": ["\n"], "temperature": 0, "top_k": 1, "stream": False, "cache_prompt": True,
                "samplers": ["top_k", "top_p", "infill"], "response_fields": ["content"]})
            assert r.status_code == 200 and r.headers["x-route-label"] == "fim"
            middle = r.json()["content"]
        elif dialect == "openai":
            middle = oai.completions.create(model="auto", prompt=row["prompt"], suffix=row["suffix"], max_tokens=32,
                                            stop="\n", temperature=0).choices[0].text
        else:
            middle = oll.generate(model="auto", prompt=row["prompt"], suffix=row["suffix"],
                                  options={"num_predict": 32, "stop": ["\n"], "temperature": 0}).response
        line = middle.split("\n")[0] + "\n"
        program = row["prompt"] + line + row["suffix"] + "\n" + row["test"] + f"\ncheck({row['entry_point']})\n"
        results.append((row["task_id"], dialect, passes(program)))
    passed = [r for r in results if r[2]]
    assert len(passed) >= 2, f"FIM middles that pass their tests: {results}"

"""Integration: correct FIM with the real Qwen2.5-Coder-0.5B-Instruct through the pool.

Problems from HumanEval-SingleLineInfilling (openai/human-eval-infilling, MIT): the generated
middle must make the problem's own tests pass. The problems were picked among those the model
solves greedily through a correct FIM prompt (and fails through llama-cpp-python's `suffix`
path, see bench/fim.py), so a regression in our FIM layout shows up here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.backend import BackendOptions
from models.request import Request, SamplingParams, text_message
from models.catalog import Catalog, LocalSource, ModelSpec
from models.pool import Pool

pytestmark = pytest.mark.qwen

DATA = Path("/work/shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz")
TASKS = [  # short prompts among those bench/fim.py's run passed through our path (0/60 via `suffix`)
    "SingleLineInfilling/HumanEval/28/L0",
    "SingleLineInfilling/HumanEval/26/L2",
    "SingleLineInfilling/HumanEval/44/L1",
]


@pytest.fixture(scope="module")
def problems():
    if not DATA.is_file():
        pytest.skip(f"HumanEval-SingleLineInfilling data not found at {DATA}")
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    return [rows[t] for t in TASKS]


@pytest.fixture(scope="module")
def pool(qwen_gguf):
    spec = ModelSpec(id="qwen-coder", labels=["fim", "code_edit"], source=LocalSource(path=qwen_gguf), n_ctx=4096)
    # One thread: on a shared, busy 2-core machine two llama.cpp threads spin at every barrier
    # and run ~10x slower than one (measured here); speed is not what this test checks.
    with Pool(Catalog(models=[spec]), options=BackendOptions(n_threads=1, n_threads_batch=1),
              memory_budget_bytes=4 * 1024**3, queue_size=4) as p:
        yield p


def fim_request(kind: str, **fields) -> Request:
    # Single-line infilling: stop at the first newline and end the line (as bench/fim.py does).
    return Request(kind, params=SamplingParams(temperature=0.0, max_tokens=64, stop=("\n",)), **fields)


def passes(problem: dict, middle: str) -> bool:
    middle = middle.split("\n", 1)[0] + "\n"
    program = problem["prompt"] + middle + problem["suffix"] + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    return proc.returncode == 0


def test_fim_middles_make_the_tests_pass(pool, problems):
    failures = []
    for problem in problems:
        gen = pool.submit("qwen-coder", fim_request("fim", prefix=problem["prompt"], suffix=problem["suffix"]))
        middle, done = gen.collect()
        assert done.reason in ("stop", "length") and done.usage.completion_tokens > 0
        if not passes(problem, middle):
            failures.append((problem["task_id"], middle))
    assert not failures, failures


def test_a_clients_starcoder_template_is_rewritten_into_qwens(pool, problems):
    # Continue/Twinny send pre-templated prompts for the family they guess from the model name.
    problem = problems[0]
    client_prompt = f"<fim_prefix>{problem['prompt']}<fim_suffix>{problem['suffix']}<fim_middle>"
    middle, done = pool.submit("qwen-coder", fim_request("complete", prompt=client_prompt)).collect()
    assert passes(problem, middle), middle


def test_chat_through_the_gguf_template(pool):
    text, done = pool.submit("qwen-coder", Request(
        "chat", messages=(text_message("user", "Reply with the word OK only."),),
        params=SamplingParams(temperature=0.0, max_tokens=8),
    )).collect()
    assert done.reason == "stop" and "OK" in text


CACHE_SENSITIVE = [  # middles that used to change with the KV cache's state (bench/fim_dialects.py, 57/60 before)
    "SingleLineInfilling/HumanEval/148/L4",
    "SingleLineInfilling/HumanEval/144/L3",
    "SingleLineInfilling/HumanEval/149/L2",
    "SingleLineInfilling/HumanEval/16/L0",
]


def test_greedy_fim_does_not_depend_on_what_the_cache_held(pool):
    if not DATA.is_file():
        pytest.skip(f"HumanEval-SingleLineInfilling data not found at {DATA}")
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    chat = Request("chat", messages=(text_message("user", "Hi"),), params=SamplingParams(max_tokens=1))

    def middle(task: str) -> str:
        problem = rows[task]
        text, _ = pool.submit("qwen-coder", fim_request("fim", prefix=problem["prompt"], suffix=problem["suffix"])).collect()
        return text

    differing = {}
    for i, task in enumerate(CACHE_SENSITIVE):
        pool.submit("qwen-coder", chat).collect()  # nothing in common: evaluated afresh
        fresh = middle(task)
        again = middle(task)  # all but the last tokens cached
        middle(CACHE_SENSITIVE[i - 1])
        after_another = middle(task)  # a different problem's prompt cached
        if not fresh == again == after_another:
            differing[task] = (fresh, again, after_another)
    assert not differing, differing


"""FIM correctness: our FIM path versus llama-cpp-python's own `suffix` path, same model, greedy.

A fixed sample of HumanEval-SingleLineInfilling (openai/human-eval-infilling, MIT) goes through
both paths once. The task is one line, so both paths stop at the first newline and the middle
is that line (newline included); it passes when `prompt + middle + suffix + test +
check(entry_point)` runs without error in a fresh Python process. llama-cpp-python 0.3.x's `suffix` path puts token
id 0 where the FIM tokens belong; ours builds the prompt from the FIM tokens in the vocabulary.

    .venv/bin/python bench/fim.py [--n 60] [--seed 0] [--model PATH] [--max-tokens 64]

Prints a table and writes bench/results/fim.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.backend import BackendOptions  # noqa: E402
from models.events import Finish, TextDelta  # noqa: E402
from models.request import Request, SamplingParams  # noqa: E402
from models.catalog import LocalSource, ModelSpec  # noqa: E402
from models.llama_backend import LlamaBackend  # noqa: E402

DATA = Path(os.environ.get("FIM_DATA", "/work/shared/data/fim/HumanEval-SingleLineInfilling.jsonl.gz"))
RESULTS = ROOT / "bench" / "results" / "fim.json"
FALLBACK_QWEN = Path("/tmp/qwen/qwen2.5-coder-0.5b-instruct.gguf")


def load_problems(path: Path, n: int, seed: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r["task_id"])
    return random.Random(seed).sample(rows, n)


def one_line(text: str) -> str:
    """The single line a single-line infilling task asks for, newline included."""
    return text.split("\n", 1)[0] + "\n"


def passes(problem: dict, middle: str, timeout_s: float = 10.0) -> bool:
    """Run the completed program and its tests in a fresh interpreter."""
    program = (
        problem["prompt"] + middle + problem["suffix"] + "\n" + problem["test"]
        + f"\n\ncheck({problem['entry_point']})\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(program)
        script = f.name
    try:
        proc = subprocess.run([sys.executable, script], capture_output=True, timeout=timeout_s)
        return proc.returncode == 0
    except subprocess.TimeoutExpired:
        return False
    finally:
        os.unlink(script)


def default_model() -> Path:
    try:
        from models.catalog import builtin_profile
        from models.fetch import resolve_weights

        spec = builtin_profile("starter").get("qwen2.5-coder-0.5b-instruct")
        found = resolve_weights(spec, download=False, progress=False)
        if found:
            return Path(found)
    except Exception:
        pass
    return FALLBACK_QWEN


def run_ours(model: Path, problems: list[dict], max_tokens: int, threads: int) -> list[dict]:
    spec = ModelSpec(id="bench-fim", labels=["fim"], source=LocalSource(path=model), n_ctx=4096)
    backend = LlamaBackend(spec, model, BackendOptions(n_threads=threads, n_threads_batch=threads))
    out = []
    try:
        for p in problems:
            request = Request(
                "fim", prefix=p["prompt"], suffix=p["suffix"],
                params=SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=("\n",)),
            )
            started = time.perf_counter()
            parts, done = [], None
            for ev in backend.generate(request, threading.Event()):
                if isinstance(ev, Finish):
                    done = ev
                elif isinstance(ev, TextDelta):
                    parts.append(ev.text)
            out.append({
                "task_id": p["task_id"], "middle": one_line("".join(parts)), "seconds": time.perf_counter() - started,
                "completion_tokens": done.usage.completion_tokens, "predicted_ms": done.usage.predicted_ms,
                "prompt_tokens": done.usage.prompt_tokens,
            })
    finally:
        backend.close()
    return out


def run_llama_cpp_suffix(model: Path, problems: list[dict], max_tokens: int, threads: int) -> list[dict]:
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    out = []
    try:
        for p in problems:
            started = time.perf_counter()
            res = llm.create_completion(prompt=p["prompt"], suffix=p["suffix"], temperature=0.0,
                                        max_tokens=max_tokens, stop=["\n"])
            usage = res.get("usage", {})
            out.append({
                "task_id": p["task_id"], "middle": one_line(res["choices"][0]["text"]),
                "seconds": time.perf_counter() - started,
                "completion_tokens": usage.get("completion_tokens", 0), "prompt_tokens": usage.get("prompt_tokens", 0),
            })
    finally:
        llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    model = args.model or default_model()
    if not model.is_file():
        sys.exit(f"no model at {model}: run `route models pull qwen2.5-coder-0.5b-instruct` or pass --model")
    problems = load_problems(DATA, args.n, args.seed)
    by_id = {p["task_id"]: p for p in problems}

    paths = {"ours (FIM tokens from the vocabulary)": run_ours, "llama-cpp-python suffix=": run_llama_cpp_suffix}
    results = {}
    for name, fn in paths.items():
        started = time.perf_counter()
        rows = fn(model, problems, args.max_tokens, args.threads)
        for row in rows:
            row["passed"] = passes(by_id[row["task_id"]], row["middle"])
        results[name] = rows
        print(f"{name}: {sum(r['passed'] for r in rows)}/{len(rows)} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FIM pass rate, HumanEval-SingleLineInfilling, n={len(problems)} (seed {args.seed}), {model.name}, greedy")
    for col in ("path", "passed", "pass rate", "mean s/problem", "decode tok/s"):
        table.add_column(col)
    summary = {}
    for name, rows in results.items():
        passed = sum(r["passed"] for r in rows)
        secs = sum(r["seconds"] for r in rows) / len(rows)
        dec_ms = sum(r.get("predicted_ms", 0.0) for r in rows)
        toks = sum(r["completion_tokens"] for r in rows)
        tps = toks / (dec_ms / 1000.0) if dec_ms else None
        summary[name] = {"passed": passed, "n": len(rows), "pass_rate": passed / len(rows),
                         "mean_seconds": secs, "decode_tokens_per_s": tps, "completion_tokens": toks}
        table.add_row(name, f"{passed}/{len(rows)}", f"{passed / len(rows):.1%}", f"{secs:.2f}",
                      f"{tps:.1f}" if tps else "-")
    Console().print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "fim",
        "data": "openai/human-eval-infilling HumanEval-SingleLineInfilling (MIT)",
        "model": model.name, "n": len(problems), "seed": args.seed, "max_tokens": args.max_tokens,
        "threads": args.threads, "sampling": "greedy (temperature 0), stop at the first newline",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
        "problems": {name: rows for name, rows in results.items()},
    }, indent=1))
    print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

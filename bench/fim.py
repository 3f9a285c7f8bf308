"""FIM correctness: our FIM path (with and without its end-of-middle trimming) versus llama-cpp-python's `suffix`.

Fixed samples of HumanEval-SingleLineInfilling and -MultiLineInfilling (openai/human-eval-infilling,
MIT) go, greedy, through each path once, as an editor sends them: no newline stop, up to
`--max-tokens`. A middle passes when `prompt + middle + suffix + test + check(entry_point)` runs
without error in a fresh Python process. "Past the hole": the answer has more lines with text
than the hole's own solution (HumanEval's canonical middle), i.e. it ran on into the suffix,
a fence, prose or test code. Paths: our backend with `fim_trim: false` (the model's own end),
our backend through models/fim_end.watch (the router's end of the middle, as the pool applies
it), and llama-cpp-python 0.3.x's `suffix` path (token id 0 where the FIM tokens belong).

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

FIM_DATA = Path(os.environ.get("FIM_DATA_DIR", "/work/shared/data/fim"))
DATA = FIM_DATA / "HumanEval-SingleLineInfilling.jsonl.gz"
DATASETS = {"SingleLine": DATA, "MultiLine": FIM_DATA / "HumanEval-MultiLineInfilling.jsonl.gz"}
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


def past_hole(problem: dict, middle: str) -> bool:
    """Does the answer hold more lines with text than the hole's own solution (it ran past the hole)?"""
    def lines(text: str) -> int:
        return sum(1 for line in text.split("\n") if line.strip())
    return lines(middle) > lines(problem["canonical_solution"])


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


def run_ours(model: Path, problems: list[dict], max_tokens: int, threads: int, trim: bool) -> list[dict]:
    from models import fim_end

    spec = ModelSpec(id="bench-fim", labels=["fim"], source=LocalSource(path=model), n_ctx=4096)
    backend = LlamaBackend(spec, model, BackendOptions(n_threads=threads, n_threads_batch=threads))
    out = []
    try:
        for p in problems:
            request = Request(
                "fim", prefix=p["prompt"], suffix=p["suffix"],
                params=SamplingParams(temperature=0.0, max_tokens=max_tokens, fim_trim=trim),
            )
            started = time.perf_counter()
            parts, done = [], None
            for ev in fim_end.watch(request, backend.generate, threading.Event()):
                if isinstance(ev, Finish):
                    done = ev
                elif isinstance(ev, TextDelta):
                    parts.append(ev.text)
            out.append({
                "task_id": p["task_id"], "middle": "".join(parts), "seconds": time.perf_counter() - started,
                "completion_tokens": done.usage.completion_tokens, "predicted_ms": done.usage.predicted_ms,
                "prompt_tokens": done.usage.prompt_tokens, "finish": done.reason,
                "cut": done.fim_cut.rule if done.fim_cut else None,
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
                                        max_tokens=max_tokens)
            usage = res.get("usage", {})
            out.append({
                "task_id": p["task_id"], "middle": res["choices"][0]["text"],
                "seconds": time.perf_counter() - started,
                "completion_tokens": usage.get("completion_tokens", 0), "prompt_tokens": usage.get("prompt_tokens", 0),
            })
    finally:
        llm.close()
    return out


OURS_OFF = "ours, fim_trim off (the model's own end)"
OURS = "ours (the router's end of the middle)"
SUFFIX = "llama-cpp-python suffix="


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="Problems per data set.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    model = args.model or default_model()
    if not model.is_file():
        sys.exit(f"no model at {model}: run `route models pull qwen2.5-coder-0.5b-instruct` or pass --model")

    paths = {
        OURS_OFF: lambda m, ps: run_ours(m, ps, args.max_tokens, args.threads, trim=False),
        OURS: lambda m, ps: run_ours(m, ps, args.max_tokens, args.threads, trim=True),
        SUFFIX: lambda m, ps: run_llama_cpp_suffix(m, ps, args.max_tokens, args.threads),
    }
    results: dict[str, dict[str, list[dict]]] = {}
    for data_name, data_path in DATASETS.items():
        problems = load_problems(data_path, args.n, args.seed)
        by_id = {p["task_id"]: p for p in problems}
        for name, fn in paths.items():
            started = time.perf_counter()
            rows = fn(model, problems)
            for row in rows:
                row["passed"] = passes(by_id[row["task_id"]], row["middle"])
                row["past_hole"] = past_hole(by_id[row["task_id"]], row["middle"])
            results.setdefault(data_name, {})[name] = rows
            print(f"{data_name} {name}: {sum(r['passed'] for r in rows)}/{len(rows)} in "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FIM pass rate, HumanEval infilling, n={args.n} per set (seed {args.seed}), {model.name}, "
                        f"greedy, no newline stop, max_tokens {args.max_tokens}")
    for col in ("data", "path", "passed", "pass rate", "past the hole", "mean s/problem", "completion tokens"):
        table.add_column(col)
    summary: dict[str, dict[str, dict]] = {}
    for data_name, by_path in results.items():
        for name, rows in by_path.items():
            n = len(rows)
            passed = sum(r["passed"] for r in rows)
            past = sum(r["past_hole"] for r in rows)
            secs = sum(r["seconds"] for r in rows) / n
            toks = sum(r["completion_tokens"] for r in rows)
            summary.setdefault(data_name, {})[name] = {
                "passed": passed, "n": n, "pass_rate": passed / n, "past_hole": past, "past_hole_share": past / n,
                "mean_seconds": secs, "completion_tokens": toks}
            table.add_row(data_name, name, f"{passed}/{n}", f"{passed / n:.1%}", f"{past}/{n} ({past / n:.0%})",
                          f"{secs:.2f}", str(toks))
    Console().print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "fim",
        "data": "openai/human-eval-infilling HumanEval-SingleLineInfilling and -MultiLineInfilling (MIT)",
        "model": model.name, "n": args.n, "seed": args.seed, "max_tokens": args.max_tokens,
        "threads": args.threads, "sampling": "greedy (temperature 0), no newline stop (as editors send FIM)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
        "problems": results,
    }, indent=1))
    print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

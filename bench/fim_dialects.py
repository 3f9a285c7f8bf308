"""FIM correctness through every dialect, with the router's end of the middle, against the direct call.

Fixed samples of HumanEval-SingleLineInfilling and -MultiLineInfilling (bench/fim.py's
`load_problems`, `passes` and `past_hole`) go, greedy, as an editor sends them (no newline stop,
up to `--max-tokens`), through:

- direct: llama-cpp-python in this process on Qwen's own FIM template (`<|fim_prefix|>` ...
  `<|fim_middle|>`, tokens from the vocabulary), decoding until a FIM stop token or the limit;
  and the same answer cut to its first line (SingleLine: the one-line task's oracle, which is
  what the earlier runs of this script, with a newline stop, measured);
- our router over HTTP, `model: auto`, with `fim_trim: false` (before: the model's own end), on
  OpenAI `/v1/completions` with `suffix`;
- our router with its end of the middle (after, the default): OpenAI `/v1/completions` with
  `suffix`, llama.cpp `/infill`, Ollama `/api/generate` with `suffix`, the raw Qwen-templated
  prompt to `/v1/completions`, and a raw StarCoder-templated prompt (the router rewrites it).

Per path: passed, the share of answers past the hole (more lines with text than the hole's own
solution), tokens generated, and how each dialect said the answer ended (finish_reason,
stop_type, done_reason). Target (issue 16): every dialect passes more than the direct call.

    .venv/bin/python bench/fim_dialects.py                    # 60 SingleLine + 30 MultiLine problems
    .venv/bin/python bench/fim_dialects.py --n 5 --n-multi 5  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    add_weights_option, direct_llama, figure, machine, report_tables, router_server, running, save_figure,
    weights_from, write_results,
)
from bench.fim import DATASETS, load_problems, one_line, passes, past_hole  # noqa: E402

QWEN_STOPS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>")


def qwen_template(prefix: str, suffix: str) -> str:
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"


def starcoder_template(prefix: str, suffix: str) -> str:
    return f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"


class Direct:
    """llama-cpp-python's own decode loop (`Llama.generate`) on a correctly templated FIM prompt."""

    def __init__(self, weights: Path) -> None:
        self.llm = direct_llama(weights)
        self.stop_ids = set()
        for text in QWEN_STOPS:
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])

    def middle(self, prefix: str, suffix: str, max_tokens: int) -> tuple[str, int, str]:
        import llama_cpp

        llm = self.llm
        tokens = llm.tokenize(qwen_template(prefix, suffix).encode(), add_bos=False, special=True)
        out: list[int] = []
        reason = "length"
        for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if tok in self.stop_ids or llama_cpp.llama_token_is_eog(llm._model.vocab, tok):
                reason = "stop"
                break
            out.append(tok)
            if len(out) >= max_tokens:
                break
        return llm.detokenize(out).decode("utf-8", "replace"), len(out), reason

    def close(self) -> None:
        self.llm.close()


Answer = tuple[str, int, str]  # text, tokens generated, how the dialect said it ended


def router_paths(client: httpx.Client, url: str, max_tokens: int) -> dict[str, Callable[[str, str], Answer]]:
    def post(path: str, body: dict) -> dict:
        response = client.post(url + path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def completions(prompt: str, suffix: str | None = None, **extra: Any) -> Answer:
        body = {"model": "auto", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
        if suffix is not None:
            body["suffix"] = suffix
        got = post("/v1/completions", body)
        choice = got["choices"][0]
        return choice["text"], got["usage"]["completion_tokens"], f"finish_reason {choice['finish_reason']}"

    def infill(prefix: str, suffix: str) -> Answer:
        body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": "",
                "n_predict": max_tokens, "temperature": 0.0, "stream": False}
        got = post("/infill", body)
        return got["content"], got["tokens_predicted"], f"stop_type {got['stop_type']}"

    def ollama_suffix(prefix: str, suffix: str) -> Answer:
        body = {"model": "auto", "prompt": prefix, "suffix": suffix, "stream": False,
                "options": {"num_predict": max_tokens, "temperature": 0.0}}
        got = post("/api/generate", body)
        return got["response"], got["eval_count"], f"done_reason {got['done_reason']}"

    return {
        TRIM_OFF: lambda p, s: completions(p, s, fim_trim=False),
        "router: OpenAI /v1/completions suffix": lambda p, s: completions(p, s),
        "router: llama.cpp /infill": infill,
        "router: Ollama /api/generate suffix": ollama_suffix,
        "router: raw Qwen FIM prompt, /v1/completions": lambda p, s: completions(qwen_template(p, s)),
        "router: raw StarCoder FIM prompt (translated)": lambda p, s: completions(starcoder_template(p, s)),
    }


DIRECT = "direct llama-cpp-python, Qwen FIM template"
ONE_LINE = "direct, cut to its first line (one-line oracle)"
TRIM_OFF = "router, fim_trim false (before): OpenAI suffix"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="SingleLine problems (the same sample as bench/fim.py).")
    parser.add_argument("--n-multi", type=int, default=30, help="MultiLine problems.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--name", default="fim_dialects")
    add_weights_option(parser)
    args = parser.parse_args()

    weights = weights_from(args)
    info = machine()
    sets = {"SingleLine": load_problems(DATASETS["SingleLine"], args.n, args.seed),
            "MultiLine": load_problems(DATASETS["MultiLine"], args.n_multi, args.seed)}
    direct = Direct(weights)
    answers: dict[str, dict[str, list[Answer]]] = {}
    started = time.perf_counter()
    try:
        with running(router_server(models={"fim": weights, "code_edit": weights}, log_level="warning")) as (server,), \
                httpx.Client(timeout=600) as client:
            paths: dict[str, Callable[[str, str], Answer]] = {
                DIRECT: lambda p, s: direct.middle(p, s, args.max_tokens),
                **router_paths(client, server.url, args.max_tokens),
            }
            for data_name, problems in sets.items():
                got = answers.setdefault(data_name, {})
                for i, problem in enumerate(problems):  # problem by problem, every path: noise hits all alike
                    for name, call in paths.items():
                        got.setdefault(name, []).append(call(problem["prompt"], problem["suffix"]))
                    if (i + 1) % 10 == 0:
                        print(f"{data_name} {i + 1}/{len(problems)}, {time.perf_counter() - started:.0f} s", flush=True)
                if data_name == "SingleLine":
                    got[ONE_LINE] = [(one_line(text), n, "-") for text, n, _ in got[DIRECT]]
    finally:
        direct.close()
    checked: dict[tuple[str, str], bool] = {}
    results: dict[str, dict[str, list[bool]]] = {}
    for data_name, by_path in answers.items():
        for name, got in by_path.items():
            oks = results.setdefault(data_name, {}).setdefault(name, [])
            for problem, (middle, _, _) in zip(sets[data_name], got):
                key = (problem["task_id"], middle)
                if key not in checked:
                    checked[key] = passes(problem, middle)
                oks.append(checked[key])
    report(sets, answers, results, info, args, weights)


def report(sets: dict, answers: dict, results: dict, info: dict, args: Any, weights: Path) -> None:
    columns = ["data", "path", "passed", "pass rate", "past the hole", "tokens generated", "how it ended"]
    rows = []
    summary: dict[str, dict[str, dict]] = {}
    for data_name, by_path in results.items():
        problems = sets[data_name]
        n = len(problems)
        for name, ok in by_path.items():
            got = answers[data_name][name]
            past = sum(past_hole(p, text) for p, (text, _, _) in zip(problems, got))
            tokens = sum(t for _, t, _ in got)
            ends: dict[str, int] = {}
            for _, _, how in got:
                ends[how] = ends.get(how, 0) + 1
            summary.setdefault(data_name, {})[name] = {"passed": sum(ok), "n": n, "past_hole": past,
                                                       "tokens": tokens, "ended": ends}
            rows.append([data_name, name, f"{sum(ok)}/{n}", f"{sum(ok) / n:.0%}", f"{past}/{n} ({past / n:.0%})",
                         str(tokens) if name != ONE_LINE else "-", ", ".join(f"{k} {v}" for k, v in sorted(ends.items()))])
    targets = {}
    for data_name, by_path in summary.items():
        direct_passed = by_path[DIRECT]["passed"]
        trimmed = {k: v for k, v in by_path.items() if k.startswith("router:")}
        targets[f"{data_name}: every router dialect passes more than the direct call"] = all(
            v["passed"] > direct_passed for v in trimmed.values())
        targets[f"{data_name}: fewer answers past the hole than with fim_trim false"] = all(
            v["past_hole"] < by_path[TRIM_OFF]["past_hole"] for v in trimmed.values())
    caption = (f"HumanEval infilling, SingleLine {args.n} and MultiLine {args.n_multi} problems (seed {args.seed}, "
               f"bench/fim.py's samples), {weights.name}, greedy, no newline stop, max_tokens {args.max_tokens}")
    markdown = report_tables("FIM pass rate by dialect, before and after the router's end of the middle",
                             columns, rows, caption, targets)
    write_results(args.name, {
        "benchmark": "fim_dialects", "machine": info, "weights": weights.name, "args": vars(args),
        "data": "openai/human-eval-infilling HumanEval-SingleLineInfilling and -MultiLineInfilling (MIT)",
        "summary": summary, "targets": targets, "markdown": markdown,
        "problems": {data_name: [{"task_id": p["task_id"], **{name: {"middle": answers[data_name][name][i][0],
                                                                     "passed": results[data_name][name][i]}
                                                              for name in answers[data_name]}}
                                 for i, p in enumerate(sets[data_name])] for data_name in sets},
    })
    plot(results, args.name)


def plot(results: dict[str, dict[str, list[bool]]], name: str) -> None:
    """Pass rates per path and data set (also from a results file: `plot(passed_by_path(json), name)`)."""
    fig, axes = figure(ncols=len(results), width=6.5, height=4.2)
    for ax, (data_name, by_path) in zip(axes[0], results.items()):
        n = len(next(iter(by_path.values())))
        names = list(by_path)
        rates = [sum(by_path[k]) / n for k in names]
        colors = ["tab:blue" if k in (DIRECT, ONE_LINE) else "tab:gray" if k == TRIM_OFF else "tab:green" for k in names]
        ax.barh(range(len(names)), rates, color=colors)
        ax.axvline(sum(by_path[DIRECT]) / n, color="tab:blue", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(names)), [k.replace("router: ", "") for k in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"pass rate ({n} problems)")
        ax.set_title(f"{data_name}: router (green), fim_trim off (gray), direct (blue)", fontsize=9)
    save_figure(fig, name)


def passed_by_path(saved: dict) -> dict[str, dict[str, list[bool]]]:
    """The pass/fail table of a written results file."""
    return {data_name: {name: [row[name]["passed"] for row in rows] for name in rows[0] if name != "task_id"}
            for data_name, rows in saved["problems"].items()}


if __name__ == "__main__":
    main()

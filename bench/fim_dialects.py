"""FIM correctness through every dialect: each must equal the direct, correctly templated call.

The same fixed sample of HumanEval-SingleLineInfilling as bench/fim.py (its `load_problems`,
`one_line` and `passes` are reused) goes, greedy, through:

- direct: llama-cpp-python in this process on Qwen's own FIM template (`<|fim_prefix|>` ...
  `<|fim_middle|>`, tokens from the vocabulary), decoding until a newline or a FIM stop token;
- llama-cpp-python's `suffix=` (0.3.x puts token id 0 where the FIM tokens belong);
- our router over HTTP, `model: auto`: OpenAI `/v1/completions` with `suffix`, llama.cpp `/infill`,
  Ollama `/api/generate` with `suffix`, the raw Qwen-templated prompt to `/v1/completions`, and a
  raw StarCoder-templated prompt to `/v1/completions` (the router must rewrite it for Qwen).

Every path stops at the first newline (the task is one line). Target (issue 7): every dialect
passes exactly as many problems as the direct call; identical middles are counted too.

    .venv/bin/python bench/fim_dialects.py            # 60 problems, as bench/fim.py
    .venv/bin/python bench/fim_dialects.py --n 5      # a quick look
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
    verdict, weights_from, write_results,
)
from bench.fim import DATA, load_problems, one_line, passes  # noqa: E402

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

    def middle(self, prefix: str, suffix: str, max_tokens: int) -> str:
        import llama_cpp

        llm = self.llm
        tokens = llm.tokenize(qwen_template(prefix, suffix).encode(), add_bos=False, special=True)
        out: list[int] = []
        text = b""
        for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if tok in self.stop_ids or llama_cpp.llama_token_is_eog(llm._model.vocab, tok):
                break
            out.append(tok)
            text = llm.detokenize(out)
            if b"\n" in text or len(out) >= max_tokens:
                break
        return text.decode("utf-8", "replace")

    def suffix_path(self, prefix: str, suffix: str, max_tokens: int) -> str:
        res = self.llm.create_completion(prompt=prefix, suffix=suffix, temperature=0.0, max_tokens=max_tokens,
                                         stop=["\n"])
        return res["choices"][0]["text"]

    def close(self) -> None:
        self.llm.close()


def router_paths(client: httpx.Client, url: str, max_tokens: int) -> dict[str, Callable[[str, str], str]]:
    def post(path: str, body: dict) -> dict:
        response = client.post(url + path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def openai_suffix(prefix: str, suffix: str) -> str:
        body = {"model": "auto", "prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "temperature": 0.0,
                "stop": ["\n"]}
        return post("/v1/completions", body)["choices"][0]["text"]

    def infill(prefix: str, suffix: str) -> str:
        body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": "",
                "n_predict": max_tokens, "temperature": 0.0, "stop": ["\n"], "stream": False}
        return post("/infill", body)["content"]

    def ollama_suffix(prefix: str, suffix: str) -> str:
        body = {"model": "auto", "prompt": prefix, "suffix": suffix, "stream": False,
                "options": {"num_predict": max_tokens, "temperature": 0.0, "stop": ["\n"]}}
        return post("/api/generate", body)["response"]

    def raw_qwen(prefix: str, suffix: str) -> str:
        body = {"model": "auto", "prompt": qwen_template(prefix, suffix), "max_tokens": max_tokens,
                "temperature": 0.0, "stop": ["\n"]}
        return post("/v1/completions", body)["choices"][0]["text"]

    def raw_starcoder(prefix: str, suffix: str) -> str:
        body = {"model": "auto", "prompt": starcoder_template(prefix, suffix), "max_tokens": max_tokens,
                "temperature": 0.0, "stop": ["\n"]}
        return post("/v1/completions", body)["choices"][0]["text"]

    return {
        "router: OpenAI /v1/completions suffix": openai_suffix,
        "router: llama.cpp /infill": infill,
        "router: Ollama /api/generate suffix": ollama_suffix,
        "router: raw Qwen FIM prompt, /v1/completions": raw_qwen,
        "router: raw StarCoder FIM prompt (translated)": raw_starcoder,
    }


DIRECT = "direct llama-cpp-python, Qwen FIM template"
SUFFIX = "llama-cpp-python suffix="


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="Problems (the same sample as bench/fim.py for n, seed).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--name", default="fim_dialects")
    add_weights_option(parser)
    args = parser.parse_args()

    weights = weights_from(args)
    info = machine()
    problems = load_problems(DATA, args.n, args.seed)
    direct = Direct(weights)
    middles: dict[str, list[str]] = {}
    started = time.perf_counter()
    try:
        with running(router_server(models={"fim": weights, "code_edit": weights}, log_level="warning")) as (server,), \
                httpx.Client(timeout=600) as client:
            paths: dict[str, Callable[[str, str], str]] = {
                DIRECT: lambda p, s: direct.middle(p, s, args.max_tokens),
                SUFFIX: lambda p, s: direct.suffix_path(p, s, args.max_tokens),
                **router_paths(client, server.url, args.max_tokens),
            }
            for i, problem in enumerate(problems):  # problem by problem, every path: noise hits all alike
                for name, call in paths.items():
                    middles.setdefault(name, []).append(one_line(call(problem["prompt"], problem["suffix"])))
                if (i + 1) % 10 == 0:
                    print(f"{i + 1}/{len(problems)} problems, {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        direct.close()
    checked: dict[tuple[str, str], bool] = {}
    results: dict[str, list[bool]] = {}
    for name, got in middles.items():
        results[name] = []
        for problem, middle in zip(problems, got):
            key = (problem["task_id"], middle)
            if key not in checked:
                checked[key] = passes(problem, middle)
            results[name].append(checked[key])
    report(problems, middles, results, info, args, weights)


def report(problems: list[dict], middles: dict, results: dict, info: dict, args: Any, weights: Path) -> None:
    n = len(problems)
    direct_passed = sum(results[DIRECT])
    columns = ["path", "passed", "pass rate", "same middle as direct", "equals direct"]
    rows = []
    summary = {}
    for name, ok in results.items():
        same = sum(a == b for a, b in zip(middles[name], middles[DIRECT]))
        equal = sum(ok) == direct_passed
        summary[name] = {"passed": sum(ok), "n": n, "same_middle_as_direct": same}
        rows.append([name, f"{sum(ok)}/{n}", f"{sum(ok) / n:.0%}", f"{same}/{n}",
                     "-" if name in (DIRECT, SUFFIX) else verdict(equal)])
    targets = {"every router dialect passes as many as the direct call":
               all(summary[k]["passed"] == direct_passed for k in summary if k.startswith("router")),
               "every router dialect gives the direct call's middle on every problem":
               all(summary[k]["same_middle_as_direct"] == n for k in summary if k.startswith("router"))}
    caption = (f"HumanEval-SingleLineInfilling, {n} problems (seed {args.seed}, bench/fim.py's sample), "
               f"{weights.name}, greedy, stop at the first newline, max_tokens {args.max_tokens}")
    markdown = report_tables("FIM pass rate by dialect", columns, rows, caption, targets)
    write_results(args.name, {
        "benchmark": "fim_dialects", "machine": info, "weights": weights.name, "args": vars(args),
        "data": "openai/human-eval-infilling HumanEval-SingleLineInfilling (MIT)", "summary": summary,
        "targets": targets,
        "markdown": markdown,
        "problems": [{"task_id": p["task_id"], **{name: {"middle": middles[name][i], "passed": results[name][i]}
                                                  for name in middles}} for i, p in enumerate(problems)],
    })
    fig, axes = figure(ncols=1, width=7.5, height=3.8)
    ax = axes[0][0]
    names = list(results)
    rates = [sum(results[k]) / n for k in names]
    colors = ["tab:blue" if k == DIRECT else "tab:gray" if k == SUFFIX else "tab:green" for k in names]
    ax.barh(range(len(names)), rates, color=colors)
    ax.axvline(direct_passed / n, color="tab:blue", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), [k.replace("router: ", "") for k in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"pass rate ({n} problems)")
    ax.set_title("FIM pass rate: router dialects (green) vs direct (blue) and suffix= (gray)")
    save_figure(fig, args.name)


if __name__ == "__main__":
    main()

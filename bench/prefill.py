"""Prefill speed of a long prompt by llama.cpp settings: n_batch, n_ubatch, batch threads, flash attention.

An agent's turn-1 prompt is 9k to 21k tokens, so the prompt-evaluation settings decide minutes.
This evaluates the same prompt (the start of Codex's recorded request, rendered by the GGUF's
template) with llama-cpp-python directly, once per configuration, rounds interleaved, and reports
median prompt tokens/s as a ratio to the router's defaults (BackendOptions). The defaults are
chosen from these figures (bench/README.md).

    .venv/bin/python bench/prefill.py                       # 2048 tokens, 3 rounds (~6 min here)
    .venv/bin/python bench/prefill.py --tokens 4096 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import (  # noqa: E402
    N_THREADS, ROOT, add_weights_option, machine, median, report_tables, weights_from, write_results,
)

# (n_batch, n_ubatch, n_threads_batch, flash_attn); the first is the router's default.
CONFIGS = [
    (512, 512, N_THREADS, False),
    (256, 256, N_THREADS, False),
    (1024, 512, N_THREADS, False),
    (2048, 512, N_THREADS, False),
    (1024, 1024, N_THREADS, False),
    (2048, 2048, N_THREADS, False),
    (512, 512, 1, False),
    (512, 512, N_THREADS, True),
    (2048, 512, N_THREADS, True),
]


def prompt_tokens(weights: Path, n: int) -> list[int]:
    """The first `n` tokens of Codex's recorded first request, as the router renders it."""
    from models.backend import BackendOptions
    from models.catalog import LocalSource, ModelSpec
    from models.llama_backend import LlamaBackend
    from router.dialects.endpoints import parse_request

    spec = ModelSpec(id="bench", labels=["chat"], source=LocalSource(path=weights), n_ctx=16384)
    backend = LlamaBackend(spec, weights, BackendOptions(n_threads=N_THREADS))
    try:
        body = json.loads((ROOT / "tests/data/agent_requests/codex_responses.json").read_text())
        tokens = list(backend._prepare(parse_request("/v1/responses", body)).tokens)
    finally:
        backend.close()
    return (tokens * (n // len(tokens) + 1))[:n]


def prefill_seconds(weights: Path, tokens: list[int], config: tuple[int, int, int, bool]) -> float:
    import llama_cpp

    n_batch, n_ubatch, threads_batch, flash = config
    llm = llama_cpp.Llama(str(weights), n_ctx=len(tokens) + 64, n_batch=n_batch, n_ubatch=n_ubatch,
                          n_threads=N_THREADS, n_threads_batch=threads_batch, flash_attn=flash, verbose=False)
    try:
        started = time.perf_counter()
        llm.eval(tokens)
        return time.perf_counter() - started
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    add_weights_option(parser)
    args = parser.parse_args()
    weights = weights_from(args)
    tokens = prompt_tokens(weights, args.tokens)
    seconds: dict[tuple, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]  # rotate: noise lands on all alike
        for config in order:
            seconds[config].append(prefill_seconds(weights, tokens, config))
            print(f"round {r + 1} {config}: {len(tokens) / seconds[config][-1]:.1f} tokens/s", flush=True)
    base = len(tokens) / median(seconds[CONFIGS[0]])
    rows, table = [], []
    for config, values in seconds.items():
        tps = len(tokens) / median(values)
        rows.append({"n_batch": config[0], "n_ubatch": config[1], "n_threads_batch": config[2],
                     "flash_attn": config[3], "seconds": values, "tokens_per_s": tps})
        table.append([*map(str, config), f"{tps:.1f}", f"{tps / base:.2f}x"])
    best = max(rows, key=lambda r: r["tokens_per_s"])
    targets = {f"the default is within 5% of the best ({best['tokens_per_s'] / base:.2f}x)":
               best["tokens_per_s"] <= 1.05 * base}
    markdown = report_tables(f"Prefill of {len(tokens)} tokens, median of {args.rounds}",
                             ["n_batch", "n_ubatch", "n_threads_batch", "flash_attn", "tokens/s", "vs default"],
                             table, f"llama-cpp-python directly, {N_THREADS} decode threads", targets)
    write_results("prefill", {"machine": machine(), "tokens": len(tokens), "rows": rows, "markdown": markdown})


if __name__ == "__main__":
    main()

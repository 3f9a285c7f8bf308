"""Editor burst: typing fires a FIM request every 50-150 ms, each superseding the last.

llama.vim sends a non-streaming `/infill` per keystroke and kills the previous curl (the
connection closes). We replay that against our router (`/infill`, llama.vim's own body) and
against llama-cpp-python's server (`/v1/completions` with the same Qwen FIM prompt pre-templated,
its only working FIM path), then time the request for the LAST keystroke. Its latency is compared
with the same request sent alone, on the same server, right after the previous keystroke's prompt
was evaluated (so both start from the same prompt cache): ratio <= 1.2x is the target (issue 7).

Each trial types one real line of a real source file with the lines around it as prefix/suffix
(this repository's own models/pool.py); the file context is evaluated once first, as llama.vim's
warm-up does when the cursor arrives.

    .venv/bin/python bench/burst.py                   # the real run
    .venv/bin/python bench/burst.py --trials 1        # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import (  # noqa: E402
    add_weights_option, figure, fmt, llama_cpp_server, machine, median, raw_post, report_tables, ROOT,
    router_server, running, save_figure, weights_from, write_results,
)

SOURCE = ROOT / "models" / "pool.py"
TARGET_RATIO = 1.2


def typed_lines(text: str, n: int, seed: int) -> list[int]:
    """Line numbers worth typing: code lines of 30-70 characters, away from the file's edges."""
    lines = text.splitlines()
    good = [i for i, line in enumerate(lines) if 30 <= len(line.strip()) <= 70 and 40 < i < len(lines) - 20
            and not line.strip().startswith(("#", '"'))]
    return sorted(random.Random(seed).sample(good, n))


class Editor:
    """The file, the cursor line being typed, and the request bodies an editor sends at each keystroke."""

    def __init__(self, text: str, line_no: int, n_prefix: int, n_suffix: int, n_predict: int) -> None:
        lines = text.splitlines()
        self.line = lines[line_no]
        self.indent = self.line[: len(self.line) - len(self.line.lstrip())]
        self.prefix = "\n".join(lines[max(0, line_no - n_prefix): line_no]) + "\n"
        self.suffix = "\n" + "\n".join(lines[line_no + 1: line_no + 1 + n_suffix]) + "\n"
        self.n_predict = n_predict
        self.typed = self.line[len(self.indent):]  # the editor auto-indents; the user types the rest

    def current(self, k: int) -> str:
        return self.indent + self.typed[:k]

    def infill(self, k: int, n_predict: int | None = None) -> dict[str, Any]:
        """llama.vim's /infill body (stream false, its samplers and limits), greedy for repeatability."""
        return {
            "id_slot": 0,
            "input_prefix": self.prefix,
            "input_suffix": self.suffix,
            "input_extra": [],
            "prompt": self.current(k),
            "n_predict": self.n_predict if n_predict is None else n_predict,
            "n_indent": len(self.indent),
            "top_k": 40,
            "top_p": 0.90,
            "temperature": 0.0,
            "samplers": ["top_k", "top_p", "infill"],
            "stream": False,
            "cache_prompt": True,
            "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1000,
            "response_fields": ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached", "truncated"],
        }

    def completion(self, k: int, n_predict: int | None = None) -> dict[str, Any]:
        """The same FIM request for llama-cpp-python's server: Qwen's PSM template, pre-rendered."""
        prompt = f"<|fim_prefix|>{self.prefix}{self.current(k)}<|fim_suffix|>{self.suffix}<|fim_middle|>"
        return {"prompt": prompt, "max_tokens": self.n_predict if n_predict is None else n_predict,
                "temperature": 0.0, "stream": False}


def parse(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def content(system: str, body: dict[str, Any]) -> str:
    if system == "router":
        return body.get("content", "")
    return body["choices"][0]["text"] if body.get("choices") else ""


def work(system: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the server says it did for the request: prompt tokens, cached ones, generated ones."""
    if system == "router":
        return {k: body.get(k) for k in ("timings/prompt_n", "timings/predicted_n", "tokens_cached")}
    return dict(body.get("usage") or {})


async def burst_trial(system: str, port: int, editor: Editor, rng: random.Random, seconds: float) -> dict[str, Any]:
    path = "/infill" if system == "router" else "/v1/completions"
    make = editor.infill if system == "router" else editor.completion

    async def prime(k: int) -> None:
        status, _, payload = await raw_post(port, path, make(k, n_predict=1))
        if status != 200:
            raise RuntimeError(f"{system} prime answered {status}: {payload[:300]!r}")

    # Cursor arrives: the file context is evaluated once (llama.vim's warm-up).
    await prime(0)
    # Typing: one request per keystroke, each closing the previous one's connection.
    started = time.perf_counter()
    k, sent, task = 0, 0, None
    while True:
        k = min(k + 1, len(editor.typed))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        final_sent = time.perf_counter()
        task = asyncio.create_task(raw_post(port, path, make(k)))
        sent += 1
        await asyncio.sleep(rng.uniform(0.050, 0.150))
        if time.perf_counter() - started >= seconds:
            break
    status, _, payload = await task
    burst_s = time.perf_counter() - final_sent
    final_k = k
    final_body = parse(payload)
    # The same final request alone: previous keystroke's prompt evaluated first, as in the burst at best.
    await prime(final_k - 1)
    alone_started = time.perf_counter()
    status_alone, _, payload_alone = await raw_post(port, path, make(final_k))
    alone_s = time.perf_counter() - alone_started
    alone_body = parse(payload_alone)
    return {
        "system": system, "requests": sent, "final_keystroke": final_k, "burst_s": burst_s, "alone_s": alone_s,
        "ratio": burst_s / alone_s if alone_s > 0 else None, "status": status, "status_alone": status_alone,
        "same_text": content(system, final_body) == content(system, alone_body), "text": content(system, final_body),
        "final_work": work(system, final_body), "alone_work": work(system, alone_body),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="Lines typed per server.")
    parser.add_argument("--seconds", type=float, default=2.0, help="How long each burst of typing lasts.")
    parser.add_argument("--n-prefix", type=int, default=64, help="Lines before the cursor (llama.vim: up to 256).")
    parser.add_argument("--n-suffix", type=int, default=16, help="Lines after the cursor (llama.vim: up to 64).")
    parser.add_argument("--n-predict", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="burst")
    add_weights_option(parser)
    args = parser.parse_args()

    weights = weights_from(args)
    info = machine()
    text = SOURCE.read_text()
    line_nos = typed_lines(text, args.trials, args.seed)
    rows: list[dict[str, Any]] = []
    with running(router_server(models={"fim": weights, "code_edit": weights}),
                 llama_cpp_server(weights)) as (ours, theirs):
        for i, line_no in enumerate(line_nos):
            editor = Editor(text, line_no, args.n_prefix, args.n_suffix, args.n_predict)
            for system, server in (("router", ours), ("llama_cpp.server", theirs)):
                rng = random.Random(args.seed * 1000 + i)  # the same typing rhythm for both servers
                row = asyncio.run(burst_trial(system, server.port, editor, rng, args.seconds))
                row["line"] = line_no + 1
                rows.append(row)
                print(f"trial {i + 1}/{len(line_nos)} {system}: {row['requests']} requests, final "
                      f"{row['burst_s'] * 1000:.0f} ms vs alone {row['alone_s'] * 1000:.0f} ms", flush=True)
    report(rows, info, args, weights)


def report(rows: list[dict], info: dict, args: Any, weights: Path) -> None:
    summary: dict[str, Any] = {}
    for system in ("router", "llama_cpp.server"):
        mine = [r for r in rows if r["system"] == system]
        summary[system] = {
            "requests_per_burst": median([r["requests"] for r in mine]),
            "final_ms": median([r["burst_s"] * 1000 for r in mine]),
            "alone_ms": median([r["alone_s"] * 1000 for r in mine]),
            "ratio": median([r["ratio"] for r in mine]),
            "worst_ratio": max((r["ratio"] for r in mine if r["ratio"] is not None), default=None),
            "failed": sum(r["status"] != 200 or r["status_alone"] != 200 for r in mine),
            "same_text": sum(r["same_text"] for r in mine),
            "trials": len(mine),
        }
    targets = {f"router final <= {TARGET_RATIO}x alone": summary["router"]["ratio"] <= TARGET_RATIO}
    columns = ["server", "requests/burst", "final after burst ms", "same request alone ms", "ratio (median)",
               "worst ratio", "same text", "failed"]
    table_rows = [[s, fmt(v["requests_per_burst"], 0), fmt(v["final_ms"], 0), fmt(v["alone_ms"], 0),
                   fmt(v["ratio"], 2) + "x", fmt(v["worst_ratio"], 2) + "x", f"{v['same_text']}/{v['trials']}",
                   v["failed"]] for s, v in summary.items()]
    caption = (f"{args.trials} typed lines, {args.seconds:.0f} s bursts, keystrokes every 50-150 ms, "
               f"prefix {args.n_prefix} / suffix {args.n_suffix} lines, n_predict {args.n_predict}, greedy, "
               f"load {info['load_average']}")
    markdown = report_tables("Editor burst: latency of the last keystroke's FIM request", columns, table_rows,
                             caption, targets)
    write_results(args.name, {
        "benchmark": "burst", "machine": info, "weights": weights.name, "args": vars(args), "summary": summary,
        "targets": targets, "rows": rows,
        "markdown": markdown,
    })
    fig, axes = figure(ncols=1, width=6.5)
    ax = axes[0][0]
    systems = list(summary)
    width = 0.38
    for j, (key, label) in enumerate((("alone_ms", "same request alone"), ("final_ms", "last request of a burst"))):
        ax.bar([x + (j - 0.5) * width for x in range(len(systems))], [summary[s][key] for s in systems], width,
               label=label)
    for x, s in enumerate(systems):
        ax.annotate(f"{summary[s]['ratio']:.2f}x", (x + width / 2, summary[s]["final_ms"]), ha="center",
                    va="bottom", fontsize=9)
    ax.set_xticks(range(len(systems)), systems)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (median, log scale)")
    ax.set_title(f"Editor burst: last FIM request vs alone (target <= {TARGET_RATIO}x)")
    ax.legend(fontsize=8)
    save_figure(fig, args.name)


if __name__ == "__main__":
    main()

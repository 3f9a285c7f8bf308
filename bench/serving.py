"""Serving overhead: the same prompts, greedy, same weights, through three systems in one run.

(a) llama-cpp-python called directly in this process (`create_chat_completion`),
(b) our router over HTTP with `model: auto` (classified, routed, pooled, rendered as SSE/JSON),
(c) llama-cpp-python's own server (`python -m llama_cpp.server`), same threads and context.

The three are interleaved per prompt (a, b, c, then the next prompt with the order rotated) so
the machine's noise lands on all of them alike. Reported: time to first token, decode tokens/s
(streaming: tokens after the first over the time between first and last), end-to-end tokens/s
(not streaming), as medians of per-prompt ratios against (a). Targets (issue 7): our tokens/s
>= 98% of (a) and >= (c); routing + HTTP adds <= 5 ms to the time to first token.

    .venv/bin/python bench/serving.py                 # the real run (~6 min here)
    .venv/bin/python bench/serving.py --prompts 2 --max-tokens 24 --reps 1   # a quick look
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
    add_weights_option, direct_llama, figure, fmt, llama_cpp_server, machine, median, post_json, post_stream,
    report_tables, router_server, running, save_figure, Timed, weights_from, write_results,
)

PROMPTS: list[str] = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Refactor this function to use a list comprehension:\n\ndef evens(xs):\n    out = []\n    for x in xs:\n"
    "        if x % 2 == 0:\n            out.append(x)\n    return out",
    "Fix the bug in this code:\n\ndef average(values):\n    return sum(values) / len(values) + 1",
    "Explain what this regular expression matches: ^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$",
    "Write a SQL query that returns the ten customers with the highest total order amount.",
    "Translate this JavaScript to Python:\n\nconst sum = arr => arr.reduce((a, b) => a + b, 0);",
    "Give three tips for writing clear commit messages.",
    "Write a bash one-liner that counts the lines of every .py file under the current directory.",
]

SYSTEMS = ("direct", "router", "llama_cpp.server")


def direct_call(llm: Any, messages: list[dict], max_tokens: int, stream: bool) -> Timed:
    started = time.perf_counter()
    if not stream:
        out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens)
        return Timed(None, time.perf_counter() - started, out["choices"][0]["message"]["content"] or "")
    first = last = None
    parts: list[str] = []
    for chunk in llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, stream=True):
        text = chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
        if text:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            parts.append(text)
    total = time.perf_counter() - started
    return Timed(None if first is None else first - started, total, "".join(parts),
                 last_token_s=None if last is None else last - started)


def http_call(client: httpx.Client, base: str, model: str | None, messages: list[dict], max_tokens: int,
              stream: bool) -> Timed:
    body: dict[str, Any] = {"messages": messages, "temperature": 0.0, "max_tokens": max_tokens, "stream": stream}
    if model is not None:
        body["model"] = model
    url = base + "/v1/chat/completions"
    timed = post_stream(client, url, body) if stream else post_json(client, url, body)
    if timed.status != 200:
        raise RuntimeError(f"{base} answered {timed.status}: {timed.body}")
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="How many of the fixed prompts.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2, help="Rounds over the prompts.")
    parser.add_argument("--cached-reps", type=int, default=4, help="Prompt-cached TTFT samples per prompt and round.")
    parser.add_argument("--name", default="serving", help="Result file name in bench/results/.")
    add_weights_option(parser)
    args = parser.parse_args()

    weights = weights_from(args)
    prompts = PROMPTS[: args.prompts]
    info = machine()
    labels = {label: weights for label in ("code_edit", "fim", "chat", "instruct")}
    llm = direct_llama(weights)
    with running(router_server(models=labels), llama_cpp_server(weights)) as (ours, theirs), \
            httpx.Client(timeout=300) as client:
        calls: dict[str, Callable[..., Timed]] = {
            "direct": lambda m, s, n=args.max_tokens: direct_call(llm, m, n, s),
            "router": lambda m, s, n=args.max_tokens: http_call(client, ours.url, "auto", m, n, s),
            "llama_cpp.server": lambda m, s, n=args.max_tokens: http_call(client, theirs.url, None, m, n, s),
        }
        warm = [{"role": "user", "content": "Say hello."}]
        for name in SYSTEMS:  # load every model (the router loads on first use) before timing anything
            calls[name](warm, False)
            calls[name](warm, True)
        rows: list[dict[str, Any]] = []
        order = list(SYSTEMS)
        for rep in range(args.reps):
            for i, prompt in enumerate(prompts):
                messages = [{"role": "user", "content": prompt}]
                for stream in (True, False):
                    for name in order:
                        t = calls[name](messages, stream)
                        n_tokens = len(llm.tokenize(t.text.encode(), add_bos=False, special=False)) if t.text else 0
                        rows.append({"rep": rep, "prompt": i, "stream": stream, "system": name,
                                     "ttft_s": t.ttft_s, "total_s": t.total_s, "last_token_s": t.last_token_s,
                                     "tokens": n_tokens, "text": t.text})
                    order = order[1:] + order[:1]  # rotate who goes first
                # The same prompt again, now in every system's prompt cache: one token to evaluate,
                # so the time to first token is almost all overhead (routing, HTTP, rendering).
                # Several rounds: the overhead is a few ms, so it needs more samples than the rest.
                for again in range(args.cached_reps):
                    for name in order:
                        t = calls[name](messages, True, 2)
                        rows.append({"rep": rep, "prompt": i, "stream": "cached", "again": again, "system": name,
                                     "ttft_s": t.ttft_s, "total_s": t.total_s, "last_token_s": t.last_token_s,
                                     "tokens": 0, "text": t.text})
                    order = order[1:] + order[:1]
                print(f"rep {rep + 1}/{args.reps} prompt {i + 1}/{len(prompts)} done", flush=True)
        rss = {"router": ours.rss_bytes(), "llama_cpp.server": theirs.rss_bytes()}
    llm.close()
    report(rows, info, args, weights, rss)


def per_request(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(rep, prompt, stream, again) -> system -> row."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["rep"], r["prompt"], r["stream"], r.get("again", 0)), {})[r["system"]] = r
    return out


def decode_tps(r: dict) -> float | None:
    if r["ttft_s"] is None or r["last_token_s"] is None or r["tokens"] < 3:
        return None
    span = r["last_token_s"] - r["ttft_s"]
    return (r["tokens"] - 1) / span if span > 0 else None


def e2e_tps(r: dict) -> float | None:
    return r["tokens"] / r["total_s"] if r["tokens"] and r["total_s"] > 0 else None


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def report(rows: list[dict], info: dict, args: Any, weights: Any, rss: dict) -> None:
    groups = per_request(rows)
    summary: dict[str, Any] = {}
    for name in SYSTEMS:
        stream_rows = [g[name] for k, g in groups.items() if k[2] is True]
        plain_rows = [g[name] for k, g in groups.items() if k[2] is False]
        cached = [g for k, g in groups.items() if k[2] == "cached"]
        summary[name] = {
            "ttft_ms": median([r["ttft_s"] * 1000 for r in stream_rows if r["ttft_s"] is not None]),
            "decode_tps": median([decode_tps(r) for r in stream_rows]),
            "e2e_tps": median([e2e_tps(r) for r in plain_rows]),
            "ttft_delta_ms": median([(g[name]["ttft_s"] - g["direct"]["ttft_s"]) * 1000
                                     for k, g in groups.items() if k[2] is True and g[name]["ttft_s"] is not None
                                     and g["direct"]["ttft_s"] is not None]),
            "ttft_cached_ms": median([g[name]["ttft_s"] * 1000 for g in cached if g[name]["ttft_s"] is not None]),
            "ttft_cached_delta_ms": median([(g[name]["ttft_s"] - g["direct"]["ttft_s"]) * 1000 for g in cached
                                            if g[name]["ttft_s"] is not None and g["direct"]["ttft_s"] is not None]),
            "decode_ratio": median([ratio(decode_tps(g[name]), decode_tps(g["direct"]))
                                    for k, g in groups.items() if k[2] is True]),
            "e2e_ratio": median([ratio(e2e_tps(g[name]), e2e_tps(g["direct"]))
                                 for k, g in groups.items() if k[2] is False]),
            "same_text_as_direct": sum(g[name]["text"] == g["direct"]["text"] for k, g in groups.items()
                                       if k[2] != "cached"),
            "requests": len(stream_rows) + len(plain_rows),
        }
    ours, theirs = summary["router"], summary["llama_cpp.server"]
    targets = {
        "decode_tps >= 98% of direct": ours["decode_ratio"] >= 0.98,
        "e2e_tps >= 98% of direct": ours["e2e_ratio"] >= 0.98,
        "decode_tps >= llama_cpp.server": ours["decode_ratio"] >= theirs["decode_ratio"],
        "e2e_tps >= llama_cpp.server": ours["e2e_ratio"] >= theirs["e2e_ratio"],
        "ttft overhead <= 5 ms (prompt cached)": ours["ttft_cached_delta_ms"] <= 5.0,
    }
    columns = ["system", "TTFT ms", "+TTFT vs direct ms", "TTFT ms, prompt cached", "+TTFT cached vs direct ms",
               "decode tok/s", "decode vs direct", "e2e tok/s (no stream)", "e2e vs direct", "same text as direct"]
    table_rows = [[name, fmt(s["ttft_ms"]), fmt(s["ttft_delta_ms"]), fmt(s["ttft_cached_ms"]),
                   fmt(s["ttft_cached_delta_ms"]), fmt(s["decode_tps"]),
                   fmt(s["decode_ratio"], 3) + "x", fmt(s["e2e_tps"]), fmt(s["e2e_ratio"], 3) + "x",
                   f"{s['same_text_as_direct']}/{s['requests']}"] for name, s in summary.items()]
    n_requests = sum(1 for k in groups if k[2] is True)
    caption = (f"{n_requests} prompts x (stream, no stream, {args.cached_reps} x stream again with the prompt cached), "
               f"max_tokens={args.max_tokens}, greedy, {info['n_threads']} threads, "
               f"load {info['load_average']}")
    markdown = report_tables("Serving overhead (medians of per-request ratios against direct llama-cpp-python)",
                             columns, table_rows, caption, targets)
    write_results(args.name, {
        "benchmark": "serving", "machine": info, "weights": weights.name, "max_tokens": args.max_tokens,
        "reps": args.reps, "summary": summary, "targets": targets, "server_rss_bytes": rss,
        "markdown": markdown,
        "rows": rows,
    })
    plot(summary, args.name)


def plot(summary: dict, name: str) -> None:
    fig, axes = figure(ncols=2, width=5.0)
    systems = ["router", "llama_cpp.server"]
    colors = ["tab:green", "tab:gray"]
    ax = axes[0][0]
    xs = range(2)
    width = 0.38
    for j, (key, label) in enumerate((("decode_ratio", "decode (stream)"), ("e2e_ratio", "end-to-end (no stream)"))):
        vals = [summary[s][key] for s in systems]
        ax.bar([x + (j - 0.5) * width for x in xs], vals, width, label=label)
    ax.axhline(0.98, color="red", linestyle="--", linewidth=1, label="target 0.98")
    ax.set_xticks(list(xs), systems)
    ax.set_ylabel("tokens/s vs direct llama-cpp-python")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Throughput (median ratio)")
    ax = axes[0][1]
    ax.bar(systems, [summary[s]["ttft_cached_delta_ms"] for s in systems], color=colors)
    ax.axhline(5.0, color="red", linestyle="--", linewidth=1, label="target 5 ms")
    ax.set_ylabel("added time to first token, ms")
    ax.legend(fontsize=8)
    ax.set_title("TTFT overhead vs direct (prompt cached, median)")
    save_figure(fig, name)


if __name__ == "__main__":
    main()

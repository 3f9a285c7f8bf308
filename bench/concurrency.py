"""Concurrency: 1, 8 and 32 clients mixing the four labels against one router, in one run.

Two different models behind one router (as a user would run them): Qwen2.5-Coder-0.5B-Instruct
for code_edit and fim, Gemma 3 270M for chat and instruct. Each client loops for `--duration`
seconds, cycling through the labels in the dialect an editor or chat UI would use for each
(OpenAI chat streaming for code_edit, llama.vim `/infill` for fim, Ollama `/api/chat` NDJSON for
chat, OpenAI chat non-streaming for instruct), always with `model: auto`. A 503 with Retry-After
is the designed backpressure (the client waits as told, then goes on); anything else that is not
a 200 with text, or an answer routed to the wrong label, is a failure. Throughput per model
(requests/s and generated tokens/s from the router's own /metrics) is compared with one client;
the server's resident memory is sampled throughout and checked against the pool's budget.

    .venv/bin/python bench/concurrency.py                    # 60 s per level (~4 min here)
    .venv/bin/python bench/concurrency.py --duration 10      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    add_weights_option, figure, fmt, gemma_weights, machine, median, metric_by, percentile, report_tables,
    router_server, RssSampler, running, save_figure, scrape, weights_from, write_catalog, write_results,
)

LABELS = ("code_edit", "fim", "chat", "instruct")
CODER, GENERAL = "qwen2.5-coder-0.5b", "gemma-3-270m"
MODEL_OF = {"code_edit": CODER, "fim": CODER, "chat": GENERAL, "instruct": GENERAL}

CODE_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Refactor this to use a dict comprehension:\n\nd = {}\nfor k, v in pairs:\n    d[k] = v * 2",
    "Fix the bug: def last(xs): return xs[len(xs)]",
    "Add type hints to: def scale(v, k): return [x * k for x in v]",
]
CHAT_TURNS = [
    ("I am planning a trip to Lisbon in spring.", "Lovely choice! Spring is mild there."),
    ("My sister is getting married next month.", "Congratulations to her!"),
]
CHAT_FOLLOWUPS = ["What should I pack?", "Any ideas for a toast?", "What else should I know?"]
INSTRUCT_PROMPTS = [
    "Give three tips for staying focused while studying.",
    "Summarise the water cycle in two sentences.",
    "Name four countries in South America.",
]
FIM_LINES = [
    ("def is_even(n):\n    return ", "\n\n\nprint(is_even(4))\n"),
    ("import math\n\ndef area(r):\n    return ", "\n"),
    ("def greet(name):\n    message = ", "\n    return message\n"),
]


def request_for(label: str, i: int, max_tokens: int) -> tuple[str, dict[str, Any], bool]:
    """(path, body, streamed) for the i-th request of a label, as its usual client sends it."""
    if label == "code_edit":
        body = {"model": "auto", "messages": [{"role": "user", "content": CODE_PROMPTS[i % len(CODE_PROMPTS)]}],
                "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
        return "/v1/chat/completions", body, True
    if label == "fim":
        prefix, suffix = FIM_LINES[i % len(FIM_LINES)]
        body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": "",
                "n_predict": max_tokens, "temperature": 0.0, "top_k": 40, "top_p": 0.9, "stream": False,
                "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_predict_ms": 1000}
        return "/infill", body, False
    if label == "chat":
        user, assistant = CHAT_TURNS[i % len(CHAT_TURNS)]
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant},
                    {"role": "user", "content": CHAT_FOLLOWUPS[i % len(CHAT_FOLLOWUPS)]}]
        body = {"model": "auto", "messages": messages, "stream": True,
                "options": {"num_predict": max_tokens, "temperature": 0.0}}
        return "/api/chat", body, True
    body = {"model": "auto", "messages": [{"role": "user", "content": INSTRUCT_PROMPTS[i % len(INSTRUCT_PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0.0}
    return "/v1/chat/completions", body, False


def text_of(path: str, payload: Any) -> str:
    if path == "/infill":
        return payload.get("content", "")
    if path == "/api/chat":
        return (payload.get("message") or {}).get("content", "")
    choice = payload["choices"][0]
    return (choice.get("message") or {}).get("content") or (choice.get("delta") or {}).get("content") or ""


async def one_request(client: httpx.AsyncClient, base: str, label: str, i: int, max_tokens: int) -> dict[str, Any]:
    path, body, streamed = request_for(label, i, max_tokens)
    started = time.perf_counter()
    out: dict[str, Any] = {"label": label, "status": 0, "text": "", "routed": None, "retry_after": None}
    try:
        if streamed:
            async with client.stream("POST", base + path, json=body) as response:
                out["status"] = response.status_code
                out["routed"] = response.headers.get("x-route-label")
                out["retry_after"] = response.headers.get("retry-after")
                parts = []
                async for line in response.aiter_lines():
                    line = line[5:].strip() if line.startswith("data:") else line.strip()
                    if not line or line == "[DONE]":
                        continue
                    try:
                        payload = json.loads(line)
                    except ValueError:
                        continue
                    if "error" in payload:
                        out["error"] = payload["error"]
                        continue
                    if payload.get("choices") or "message" in payload:
                        parts.append(text_of(path, payload))
                out["text"] = "".join(parts)
        else:
            response = await client.post(base + path, json=body)
            out["status"] = response.status_code
            out["routed"] = response.headers.get("x-route-label")
            out["retry_after"] = response.headers.get("retry-after")
            if response.status_code == 200:
                out["text"] = text_of(path, response.json())
            else:
                out["error"] = response.text[:300]
    except httpx.HTTPError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["latency_s"] = time.perf_counter() - started
    return out


async def client_loop(base: str, client_id: int, deadline: float, max_tokens: int, results: list) -> None:
    # Each simulated client is its own editor: the router supersedes FIM requests per client.
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), headers={"user-agent": f"bench-editor-{client_id}"}) as client:
        n = client_id
        while time.monotonic() < deadline:
            label = LABELS[n % len(LABELS)]
            r = await one_request(client, base, label, n // len(LABELS), max_tokens)
            r["client"] = client_id
            r["finished"] = time.monotonic()
            results.append(r)
            n += 1
            if r["status"] == 503 and r["retry_after"]:
                await asyncio.sleep(min(float(r["retry_after"]), max(0.0, deadline - time.monotonic())))


def classify(r: dict[str, Any]) -> str:
    if r["status"] == 503 and r["retry_after"]:
        return "backpressure"
    if r["status"] != 200 or "error" in r:
        return "failed"
    if r["routed"] != r["label"]:
        return "misrouted"
    return "ok" if r["text"] else "empty"  # an empty FIM middle is a valid answer


async def level(base: str, clients: int, duration: float, max_tokens: int) -> tuple[list[dict], float]:
    results: list[dict] = []
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(*(client_loop(base, c, deadline, max_tokens, results) for c in range(clients)))
    return results, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per concurrency level.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrency levels (first = baseline).")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--budget-mb", type=int, default=1536, help="The pool's memory budget (both models fit).")
    parser.add_argument("--queue-size", type=int, default=16, help="Waiting requests per model before 503.")
    parser.add_argument("--general", type=Path, default=None, help="GGUF for chat/instruct (default: Gemma 3 270M).")
    parser.add_argument("--name", default="concurrency")
    add_weights_option(parser)
    args = parser.parse_args()

    coder = weights_from(args)
    general = args.general or gemma_weights()
    info = machine()
    budget = args.budget_mb * 1024 * 1024
    catalog = write_catalog(Path(tempfile.mkdtemp(prefix="bench-concurrency-")) / "catalog.yaml", [
        {"id": CODER, "labels": ["code_edit", "fim"], "path": coder},
        {"id": GENERAL, "labels": ["chat", "instruct"], "path": general},
    ])
    levels: list[dict[str, Any]] = []
    with running(router_server(config=catalog, memory_budget_bytes=budget, queue_size=args.queue_size,
                               log_level="warning")) as (server,):
        idle_rss = server.rss_bytes()
        # Load both models (and warm their code paths) before any timing.
        asyncio.run(level(server.url, 4, 0.1, 4))
        with RssSampler(server) as rss:
            for clients in args.clients:
                before = scrape(server.url)
                results, elapsed = asyncio.run(level(server.url, clients, args.duration, args.max_tokens))
                after = scrape(server.url)
                tokens = {m: after_v - metric_by(before, "router_pool_tokens_total", "model").get(m, 0.0)
                          for m, after_v in metric_by(after, "router_pool_tokens_total", "model").items()}
                kinds = [classify(r) for r in results]
                per_model = {}
                for model in (CODER, GENERAL):
                    mine = [r for r, k in zip(results, kinds) if MODEL_OF[r["label"]] == model and k in ("ok", "empty")]
                    per_model[model] = {
                        "requests_per_s": len(mine) / elapsed,
                        "tokens_per_s": tokens.get(model, 0.0) / elapsed,
                        "latency_p50_s": median([r["latency_s"] for r in mine]),
                        "latency_p99_s": percentile([r["latency_s"] for r in mine], 99),
                    }
                levels.append({
                    "clients": clients, "seconds": elapsed, "requests": len(results),
                    "outcomes": {k: kinds.count(k) for k in ("ok", "backpressure", "failed", "misrouted", "empty")},
                    "per_model": per_model, "rss_peak_bytes": max((b for t, b in rss.samples), default=0),
                    "failures": [r for r, k in zip(results, kinds) if k in ("failed", "misrouted")][:10],
                    "empty_by_label": {lb: sum(k == "empty" and r["label"] == lb for r, k in zip(results, kinds))
                                       for lb in LABELS},
                })
                print(f"{clients} clients: {levels[-1]['outcomes']}", flush=True)
        rss_samples = rss.samples
        metrics_end = scrape(server.url)
    report(levels, info, args, budget, idle_rss, rss_samples, metrics_end)


def report(levels: list[dict], info: dict, args: Any, budget: int, idle_rss: int, rss_samples: list,
           metrics_end: dict) -> None:
    base = levels[0]
    peak = max((b for _, b in rss_samples), default=0)
    columns = ["clients", "requests", "ok (empty)", "503+Retry-After", "failed", "misrouted"]
    for short in ("coder", "general"):
        columns += [f"{short} req/s", f"{short} tok/s", f"{short} vs 1 client", f"{short} p50 s"]
    rows = []
    for lv in levels:
        o = lv["outcomes"]
        row = [lv["clients"], lv["requests"], f"{o['ok'] + o['empty']} ({o['empty']})", o["backpressure"], o["failed"],
               o["misrouted"]]
        for model in (CODER, GENERAL):
            pm, pb = lv["per_model"][model], base["per_model"][model]
            vs = pm["tokens_per_s"] / pb["tokens_per_s"] if pb["tokens_per_s"] else float("nan")
            row += [fmt(pm["requests_per_s"], 2), fmt(pm["tokens_per_s"]), fmt(vs, 2) + "x",
                    fmt(pm["latency_p50_s"], 2)]
        rows.append(row)
    zero_failures = all(lv["outcomes"]["failed"] + lv["outcomes"]["misrouted"] == 0 for lv in levels)
    targets = {
        "zero failed requests (503 + Retry-After excepted)": zero_failures,
        f"RSS growth {peak - idle_rss:,} B <= pool budget {budget:,} B": peak - idle_rss <= budget,
    }
    caption = (f"coder = {CODER} (code_edit, fim), general = {GENERAL} (chat, instruct); "
               f"{args.duration:.0f} s per level, max_tokens {args.max_tokens}, queue {args.queue_size}/model, "
               f"budget {args.budget_mb} MiB; server RSS idle {idle_rss / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB; "
               f"load {info['load_average']}")
    markdown = report_tables("Concurrency: mixed labels, one router, two models", columns, rows, caption, targets)
    write_results(args.name, {
        "benchmark": "concurrency", "machine": info, "args": vars(args), "budget_bytes": budget,
        "idle_rss_bytes": idle_rss, "peak_rss_bytes": peak, "levels": levels, "targets": targets,
        "rss_samples": rss_samples[::4],
        "loads": metric_by(metrics_end, "router_model_loads_total", "model"),
        "evictions": metric_by(metrics_end, "router_model_evictions_total", "model"),
        "markdown": markdown,
    })
    fig, axes = figure(ncols=2, width=5.0)
    ax = axes[0][0]
    xs = [lv["clients"] for lv in levels]
    for model in (CODER, GENERAL):
        ax.plot(xs, [lv["per_model"][model]["tokens_per_s"] for lv in levels], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("generated tokens/s")
    ax.set_title("Throughput per model")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot([t for t, _ in rss_samples], [b / 2**20 for _, b in rss_samples], label="server RSS")
    ax.axhline((idle_rss + budget) / 2**20, color="red", linestyle="--", linewidth=1, label="idle RSS + pool budget")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title("Server memory")
    ax.legend(fontsize=8)
    save_figure(fig, args.name)


if __name__ == "__main__":
    main()

"""Model switching: time to first token when a label's model is cold, warm, or was evicted.

Two different models behind one router: Qwen2.5-Coder-0.5B-Instruct (code_edit, fim) and
Gemma 3 270M (chat, instruct), under a memory budget that holds only ONE of them (weights + KV
cache), so alternating code_edit and chat requests evicts and reloads each time. The same
alternation under a budget that holds both shows the warm path. For comparison, the way a
one-model server switches (llama-swap in front of llama-cpp-python's server): start
`python -m llama_cpp.server` with the other model and wait for its first token.

Cold = the first request after the server started (the file may or may not be in the OS page
cache; a reload after eviction usually finds it there, as on a user's machine).

    .venv/bin/python bench/switching.py               # the real run
    .venv/bin/python bench/switching.py --cycles 2    # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    add_weights_option, figure, fmt, gemma_weights, llama_cpp_server, machine, markdown_table, median, metric_by,
    post_stream, print_table, router_server, running, save_figure, scrape, weights_from, write_catalog,
    write_results,
)

CODER, GENERAL = "qwen2.5-coder-0.5b", "gemma-3-270m"
CODE = ["Write a Python function that reverses a list in place.", "Fix: def inc(x): return x + '1'",
        "Write a Python function that counts vowels in a string.", "Refactor: if a == True: return True"]
CHAT = ["Nice weather today, isn't it?", "What is your favourite season?", "Tell me about a calm place.",
        "What do people do on holidays?"]


def ask(client: httpx.Client, url: str, label: str, i: int, max_tokens: int) -> dict[str, Any]:
    """One streamed chat request for a label; the multi-turn shape makes chat unmistakable."""
    if label == "code_edit":
        messages = [{"role": "user", "content": CODE[i % len(CODE)]}]
    else:
        messages = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi! How can I help?"},
                    {"role": "user", "content": CHAT[i % len(CHAT)]}]
    body = {"model": "auto", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    t = post_stream(client, url + "/v1/chat/completions", body)
    if t.status != 200:
        raise RuntimeError(f"{label} request answered {t.status}")
    return {"label": label, "routed": t.headers.get("x-route-label"), "model": t.headers.get("x-route-model"),
            "ttft_s": t.ttft_s, "total_s": t.total_s}


def router_sequence(coder: Path, general: Path, budget: int, cycles: int, max_tokens: int) -> dict[str, Any]:
    catalog = write_catalog(Path(tempfile.mkdtemp(prefix="bench-switching-")) / "catalog.yaml", [
        {"id": CODER, "labels": ["code_edit", "fim"], "path": coder},
        {"id": GENERAL, "labels": ["chat", "instruct"], "path": general},
    ])
    steps: list[dict[str, Any]] = []
    with running(router_server(config=catalog, memory_budget_bytes=budget, log_level="warning")) as (server,), \
            httpx.Client(timeout=600) as client:
        i = 0

        def step(kind: str, label: str) -> None:
            nonlocal i
            row = ask(client, server.url, label, i, max_tokens)
            row["kind"] = kind
            steps.append(row)
            i += 1

        step("cold", "code_edit")
        step("warm", "code_edit")
        step("cold", "chat")
        step("warm", "chat")
        for _ in range(cycles):
            step("switch", "code_edit")
            step("warm", "code_edit")
            step("switch", "chat")
            step("warm", "chat")
        metrics = scrape(server.url)
    return {"steps": steps, "loads": metric_by(metrics, "router_model_loads_total", "model"),
            "evictions": metric_by(metrics, "router_model_evictions_total", "model")}


def process_swap(coder: Path, general: Path, cycles: int, max_tokens: int) -> list[dict[str, Any]]:
    """llama-swap's way: a one-model server per switch; time from spawn to the first token."""
    rows = []
    with httpx.Client(timeout=600) as client:
        for c in range(cycles):
            for label, weights in (("code_edit", coder), ("chat", general)):
                started = time.perf_counter()
                with running(llama_cpp_server(weights)) as (server,):
                    content = CODE[c % len(CODE)] if label == "code_edit" else CHAT[c % len(CHAT)]
                    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                            "temperature": 0.0, "stream": True}
                    t = post_stream(client, server.url + "/v1/chat/completions", body)
                    first = (t.ttft_s or 0.0) + (time.perf_counter() - started - t.total_s)
                rows.append({"label": label, "kind": "process swap", "ttft_s": first})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4, help="code_edit/chat alternations after the cold start.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--general", type=Path, default=None, help="GGUF for chat/instruct (default: Gemma 3 270M).")
    parser.add_argument("--name", default="switching")
    add_weights_option(parser)
    args = parser.parse_args()

    coder = weights_from(args)
    general = args.general or gemma_weights()
    info = machine()
    # Each model counts its weights and its KV cache (f16, n_ctx 4096) against the budget.
    kv_margin = 96 * 2**20
    one_only = max(coder.stat().st_size, general.stat().st_size) + kv_margin
    both = coder.stat().st_size + general.stat().st_size + 2 * kv_margin
    assert one_only < both - kv_margin, "the budget must hold only one model"
    tight = router_sequence(coder, general, one_only, args.cycles, args.max_tokens)
    roomy = router_sequence(coder, general, both, args.cycles, args.max_tokens)
    swap = process_swap(coder, general, max(1, args.cycles // 2), args.max_tokens)
    report(tight, roomy, swap, info, args, one_only, both, coder, general)


def summarise(steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label in ("code_edit", "chat"):
        for kind in ("cold", "warm", "switch", "process swap"):
            values = [s["ttft_s"] * 1000 for s in steps if s["label"] == label and s["kind"] == kind
                      and s["ttft_s"] is not None]
            if values:
                out.setdefault(label, {})[kind] = median(values)
    return out


def report(tight: dict, roomy: dict, swap: list, info: dict, args: Any, one_only: int, both: int,
           coder: Path, general: Path) -> None:
    st, sr, ss = summarise(tight["steps"]), summarise(roomy["steps"]), summarise(swap)
    columns = ["label (model)", "cold ms", "warm ms", "after eviction ms (budget: one model)",
               "switch ms (budget: both)", "evicted / warm", "process swap ms (llama-swap style)"]
    rows = []
    for label, model in (("code_edit", CODER), ("chat", GENERAL)):
        t, r = st.get(label, {}), sr.get(label, {})
        evicted, warm = t.get("switch"), t.get("warm")
        rows.append([f"{label} ({model})", fmt(t.get("cold"), 0), fmt(warm, 0), fmt(evicted, 0),
                     fmt(r.get("switch"), 0), fmt(evicted / warm if evicted and warm else None, 1) + "x",
                     fmt(ss.get(label, {}).get("process swap"), 0)])
    misrouted = sum(s["routed"] != s["label"] for s in tight["steps"] + roomy["steps"])
    caption = (f"median time to first token over {args.cycles} alternations; budgets {one_only / 2**20:.0f} MiB "
               f"(one model) and {both / 2**20:.0f} MiB (both); evictions under the tight budget: "
               f"{int(sum(tight['evictions'].values()))}, under the roomy one: {int(sum(roomy['evictions'].values()))}; "
               f"misrouted: {misrouted}; load {info['load_average']}")
    print_table("Model switching: time to first token", columns, rows, caption)
    write_results(args.name, {
        "benchmark": "switching", "machine": info, "args": vars(args), "coder": coder.name, "general": general.name,
        "budget_one_model_bytes": one_only, "budget_both_bytes": both, "tight": tight, "roomy": roomy,
        "process_swap": swap, "summary": {"tight": st, "roomy": sr, "process_swap": ss},
        "markdown": markdown_table(columns, rows) + f"\n\n{caption}",
    })
    fig, axes = figure(ncols=1, width=7.0)
    ax = axes[0][0]
    kinds = [("warm", st, "warm"), ("switch", sr, "switch, both fit"), ("switch", st, "after eviction"),
             ("cold", st, "cold (first load)"), ("process swap", ss, "process swap (llama-swap style)")]
    width = 0.16
    for j, (kind, table, name) in enumerate(kinds):
        vals = [table.get(label, {}).get(kind, 0.0) for label in ("code_edit", "chat")]
        ax.bar([x + (j - 2) * width for x in range(2)], vals, width, label=name)
    ax.set_xticks(range(2), [f"code_edit\n({CODER})", f"chat\n({GENERAL})"])
    ax.set_yscale("log")
    ax.set_ylabel("time to first token, ms (median, log)")
    ax.set_title("Model switching")
    ax.legend(fontsize=7)
    save_figure(fig, args.name)


if __name__ == "__main__":
    main()

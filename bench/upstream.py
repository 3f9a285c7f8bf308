"""What the router costs in front of an upstream: the same upstream called directly vs through us.

One upstream, llama-cpp-python's own server (`python -m llama_cpp.server`, 2 threads) or, with
`--upstream llama-server`, llama.cpp's own llama-server of our llama.cpp commit (built by
`route engine build-server`, 2 threads, one slot, prompt cache on), and our router
(`route serve`) whose catalog sends every label to that upstream (`kind: upstream`).
The same prompts, greedy, go (a) straight to the upstream's /v1/chat/completions and (b) to the
router with `model: auto` (classified, routed, pooled, forwarded, re-rendered), interleaved per
prompt with the order alternating, in one run. Reported: time to first token, decode tokens/s
while streaming (tokens after the first over the time from first to last), end-to-end time
without streaming, and whether the greedy texts are identical. Each prompt is sent once unmeasured
first, so every measured request finds it in the upstream's prompt cache (warm TTFT), whichever
path goes first.

A shared 2-core machine makes llama.cpp's own speed swing several-fold from one request to the
next, so each request's client-side decode rate is also divided by the upstream's OWN decode
rate for that same request (llama.cpp's `eval time` line in the server log, which both servers
write): the "delivery" ratio. Direct calls set the baseline; a router that adds nothing
delivers the same ratio.

Weights: the real Qwen2.5-Coder-0.5B-Instruct when cached (HF cache, or
/tmp/qwen/qwen2.5-coder-0.5b-instruct.gguf), otherwise the tiny test GGUF (said in the output).

    .venv/bin/python bench/upstream.py                     # the real run (~3 min here)
    .venv/bin/python bench/upstream.py --prompts 2 --max-tokens 16 --tiny   # a quick look
    .venv/bin/python bench/upstream.py --upstream llama-server

Prints a table and writes bench/results/upstream.json (upstream_llama_server.json for llama-server).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402
import yaml  # noqa: E402

from bench.common import (  # noqa: E402
    N_THREADS, ROOT, Timed, fmt, llama_cpp_server, llama_server, machine, median, post_json, post_stream, print_table,
    qwen_weights, router_server, running, write_results,
)

PROMPTS: list[str] = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Fix the bug in this code:\n\ndef average(values):\n    return sum(values) / len(values) + 1",
    "Explain what this regular expression matches: ^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$",
    "Write a SQL query that returns the ten customers with the highest total order amount.",
    "Give three tips for writing clear commit messages.",
    "Translate this JavaScript to Python:\n\nconst sum = arr => arr.reduce((a, b) => a + b, 0);",
    "What is the difference between a process and a thread?",
    "Write a bash one-liner that counts the lines of every .py file under the current directory.",
]

UPSTREAM_ID = "upstream-coder"


def pick_weights(force_tiny: bool) -> tuple[Path, str]:
    """The real Qwen weights where cached, else the tiny test GGUF: (path, what it is)."""
    if not force_tiny:
        try:
            return qwen_weights(), "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (real weights)"
        except SystemExit as exc:
            print(f"real weights unavailable ({exc}); using the tiny test GGUF", file=sys.stderr)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(Path(tempfile.mkdtemp(prefix="bench-upstream-")) / "tiny.gguf", fim_family="qwen", n_ctx=4096)
    return path, "tiny test GGUF (gibberish; timings only show the router's own overhead)"


def catalog_for(upstream_url: str, api: str) -> Path:
    """A catalog sending every label to the one upstream."""
    data = {
        "models": [
            {
                "id": UPSTREAM_ID,
                "labels": ["code_edit", "fim", "chat", "instruct"],
                "n_ctx": 4096,
                "fim_family": "qwen",
                # llama_cpp.server serves one generation at a time (and cuts one short when
                # another waits), llama-server here has one slot: one slot per replica.
                "source": {"kind": "upstream", "api": api, "urls": [upstream_url], "parallel": 1},
            }
        ]
    }
    path = Path(tempfile.mkdtemp(prefix="bench-upstream-")) / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def call(client: httpx.Client, base: str, model: str | None, prompt: str, max_tokens: int, stream: bool) -> Timed:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "max_tokens": max_tokens,
        "stream": stream,
    }
    if model is not None:
        body["model"] = model
    else:  # direct: the sampling the router forwards, so that greedy texts can be compared
        body.update(top_k=40, min_p=0.05, repeat_penalty=1.0, typical_p=1.0)
    url = base + "/v1/chat/completions"
    timed = post_stream(client, url, body) if stream else post_json(client, url, body)
    if timed.status != 200:
        raise RuntimeError(f"{base} answered {timed.status}: {timed.body}")
    return timed


# llama-cpp-python's perf line ("... eval time = X ms / N runs") and llama-server's print_timing
# ("       eval time = X ms / N tokens"); never the "prompt eval time" line of either.
EVAL_LINE = re.compile(r"^(?:llama_perf_context_print:)?\s+eval time =\s+([\d.]+) ms /\s+(\d+) (?:runs|tokens)", re.M)
UPSTREAMS = {  # --upstream: (how to start it, the catalog's api for it, results file)
    "llama_cpp.server": (llama_cpp_server, "openai", "upstream"),
    "llama-server": (llama_server, "llama.cpp", "upstream_llama_server"),
}


class UpstreamSpeed:
    """The upstream's own decode speed per request, read from llama.cpp's perf lines in its log."""

    def __init__(self, log_path: str) -> None:
        self.log_path = Path(log_path)
        self.seen = 0

    def _lines(self) -> list[tuple[float, int]]:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return [(float(ms), int(runs)) for ms, runs in EVAL_LINE.findall(text)]

    def skip(self) -> None:
        self.seen = len(self._lines())

    def next(self, wait_s: float = 2.0) -> float | None:
        """tokens/s of the generation that just ended (None if its line never showed up)."""
        deadline = time.monotonic() + wait_s
        while True:
            lines = self._lines()
            if len(lines) > self.seen:
                ms, runs = lines[self.seen]
                self.seen += 1
                return runs / (ms / 1000) if ms > 0 and runs > 1 else None
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def decode_tps(t: Timed) -> float | None:
    """Streaming decode speed: tokens after the first over the time from first to last token."""
    if t.ttft_s is None or t.last_token_s is None or t.chunks < 2 or t.last_token_s <= t.ttft_s:
        return None
    return (t.chunks - 1) / (t.last_token_s - t.ttft_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="How many of the prompts to run.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens to generate per request.")
    parser.add_argument("--tiny", action="store_true", help="Use the tiny test GGUF even if real weights exist.")
    parser.add_argument("--upstream", choices=sorted(UPSTREAMS), default="llama_cpp.server",
                        help="The upstream server to put behind the router.")
    args = parser.parse_args()
    start_upstream, api, results_name = UPSTREAMS[args.upstream]
    prompts = PROMPTS[: args.prompts]

    weights, weights_note = pick_weights(args.tiny)
    print(f"model: {weights_note}\n  {weights}")
    upstream = start_upstream(weights)
    router = router_server(config=catalog_for(upstream.url, api), idle_ttl_s=0)
    rows: list[dict[str, Any]] = []
    with running(upstream, router), httpx.Client(timeout=600) as client:
        paths = {"direct": (upstream.url, None), "router": (router.url, "auto")}
        for name, (base, model) in paths.items():  # warm-up: model pages, prompt cache, router's backend
            call(client, base, model, "hello", 4, True)
            call(client, base, model, "hello", 4, False)
        upstream.log.flush()
        speed = UpstreamSpeed(upstream.log.name)
        time.sleep(0.5)
        speed.skip()
        for i, prompt in enumerate(prompts):
            order = ["direct", "router"] if i % 2 == 0 else ["router", "direct"]
            row: dict[str, Any] = {"prompt": prompt}
            # Both upstreams keep the last prompt's KV cache: unprimed, whichever path goes second
            # reads the prompt for free. One unmeasured call first makes every measured one a hit.
            call(client, upstream.url, None, prompt, 1, False)
            speed.next()
            for stream in (True, False):
                for name in order:
                    base, model = paths[name]
                    t = call(client, base, model, prompt, args.max_tokens, stream)
                    upstream_tps = speed.next()
                    key = f"{name}_{'stream' if stream else 'json'}"
                    client_tps = decode_tps(t)
                    row[key] = {
                        "upstream_own_decode_tps": upstream_tps,
                        "delivery": client_tps / upstream_tps if client_tps and upstream_tps else None,
                        "ttft_ms": None if t.ttft_s is None else t.ttft_s * 1000,
                        "total_ms": t.total_s * 1000,
                        "tokens": t.chunks,
                        "decode_tps": client_tps,
                        "text": t.text,
                        "route_model": t.headers.get("x-route-model"),
                        "route_label": t.headers.get("x-route-label"),
                    }
            rows.append(row)
            d, r = row["direct_stream"], row["router_stream"]
            print(f"  prompt {i + 1}/{len(prompts)}: ttft {fmt(d['ttft_ms'])} vs {fmt(r['ttft_ms'])} ms, "
                  f"decode {fmt(d['decode_tps'])} vs {fmt(r['decode_tps'])} tok/s "
                  f"(upstream's own: {fmt(d['upstream_own_decode_tps'])} vs {fmt(r['upstream_own_decode_tps'])})")

    def med(key: str, field: str) -> float:
        return median([row[key][field] for row in rows])

    ttft_added = median([row["router_stream"]["ttft_ms"] - row["direct_stream"]["ttft_ms"] for row in rows
                         if row["router_stream"]["ttft_ms"] is not None and row["direct_stream"]["ttft_ms"] is not None])
    tps_ratio = median([row["router_stream"]["decode_tps"] / row["direct_stream"]["decode_tps"] for row in rows
                        if row["router_stream"]["decode_tps"] and row["direct_stream"]["decode_tps"]])
    json_ratio = median([row["router_json"]["total_ms"] / row["direct_json"]["total_ms"] for row in rows])
    delivery_direct = med("direct_stream", "delivery")
    delivery_router = med("router_stream", "delivery")
    identical = sum(row["router_stream"]["text"] == row["direct_stream"]["text"] for row in rows)
    routed_to = sorted({row["router_stream"]["route_model"] for row in rows if row["router_stream"]["route_model"]})

    table = [
        ["upstream directly", fmt(med("direct_stream", "ttft_ms")), fmt(med("direct_stream", "decode_tps")),
         fmt(delivery_direct, 3), fmt(med("direct_json", "total_ms"), 0), "1.000", "-"],
        ["through the router", fmt(med("router_stream", "ttft_ms")), fmt(med("router_stream", "decode_tps")),
         fmt(delivery_router, 3), fmt(med("router_json", "total_ms"), 0), fmt(tps_ratio, 3),
         fmt(ttft_added, 1, " ms")],
    ]
    print_table(
        f"Router overhead in front of an upstream ({args.upstream}), {len(rows)} prompts, "
        f"{args.max_tokens} tokens, greedy",
        ["path", "TTFT p50 ms", "decode tok/s p50", "delivery p50", "non-stream total p50 ms", "decode ratio",
         "TTFT added p50"],
        table,
        caption=f"model: {weights_note}; delivery = client decode tok/s / the upstream's own decode tok/s in "
                f"the same request; identical greedy text {identical}/{len(rows)}; "
                f"non-stream total ratio {fmt(json_ratio, 3)}; routed to {', '.join(routed_to)}",
    )
    write_results(results_name, {
        "benchmark": "router overhead in front of an upstream",
        "model": weights_note,
        "weights": str(weights),
        "upstream": f"{args.upstream} ({N_THREADS} threads)",
        "upstream_argv": upstream.argv,
        "router_catalog": {"id": UPSTREAM_ID, "source": f"upstream, api {api}, 1 replica, parallel 1"},
        "max_tokens": args.max_tokens,
        "machine": machine(),
        "summary": {
            "direct_ttft_ms_p50": med("direct_stream", "ttft_ms"),
            "router_ttft_ms_p50": med("router_stream", "ttft_ms"),
            "ttft_added_ms_p50": ttft_added,
            "direct_decode_tps_p50": med("direct_stream", "decode_tps"),
            "router_decode_tps_p50": med("router_stream", "decode_tps"),
            "decode_tps_ratio_p50": tps_ratio,
            "direct_delivery_p50": delivery_direct,
            "router_delivery_p50": delivery_router,
            "delivery_ratio": (delivery_router / delivery_direct) if delivery_direct and delivery_router else None,
            "direct_json_total_ms_p50": med("direct_json", "total_ms"),
            "router_json_total_ms_p50": med("router_json", "total_ms"),
            "json_total_ratio_p50": json_ratio,
            "identical_greedy_text": f"{identical}/{len(rows)}",
        },
        "requests": rows,
    })


if __name__ == "__main__":
    main()

"""Agent sessions: does every turn evaluate only its new tokens, alone and with other clients in between?

A session starts from a request recorded from the real CLI (tests/data/agent_requests/: Codex's
`/v1/responses`, Claude Code's `/v1/messages`, 9k and 21k tokens with their tools), sent as
it was (only `max_tokens` cut and greedy sampling). Each later turn appends what the router
answered (text and tool calls, in the dialect) and a scripted tool result plus a user
message, as the CLI would. Three systems, same weights, same 2 threads, same context:

(a) the router (`route serve`, one model for every label, model `auto`), over HTTP in the dialect;
(b) llama-cpp-python directly in this process with a perfect cache: it sees only this session,
    given the very token ids the router evaluated (rendered here by the router's template code);
(c) llama-server with `--cache-reuse 256`, built from the llama.cpp that the pinned
    llama-cpp-python vendors (`route engine build-server`), given the same token ids, when built.

Scenarios: the session alone; and with an editor's `/infill` and a second chat (another system
prompt) sent to the same model between its turns. Per turn: prompt tokens, tokens the system
actually evaluated, new tokens (what a perfect cache must evaluate), time to the first generated
event, prefill time (to the first token: the router's from its /metrics histogram
router_prompt_eval_seconds, the others' first streamed token), decode tokens/s. The router's
first event can come later than its first token: with tools declared, text that may open a call
(```json, `{"name"`) is held until the parser knows. The router starts cold in each scenario,
so its turn-1 first event and decode figures include the model's load; its prefill does not. Targets (issue 15): evaluated <= new + 64
in both scenarios; time to first token of turns >= 2 <= 1.2x (b) alone and <= 1.5x (b) when
interleaved; turn-1 prefill tokens/s >= 0.98x (b); saved states within the budget.

    .venv/bin/python bench/agent_session.py                    # Codex session, 3 turns (~12 min here)
    .venv/bin/python bench/agent_session.py --agent claude     # Claude Code, 21k tokens (longer)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    N_THREADS, ROOT, ServerProcess, add_weights_option, free_port, machine, median, report_tables, router_server,
    running, scrape, weights_from, write_catalog, write_results,
)

RECORDED = ROOT / "tests" / "data" / "agent_requests"
AGENTS = {  # recorded first request, endpoint, context the session needs
    "codex": ("codex_responses.json", "/v1/responses", 16384),
    "claude": ("claude_code_messages.json", "/v1/messages", 32768),
}
FOLLOW_UPS = [
    "Now add a main guard to hello.py and run it.",
    "Good. Also print the current date on a second line.",
    "Explain in one sentence what you changed.",
    "Add a docstring to the file.",
]
TOOL_RESULT = "Done. Exit code 0."
INFILL = {"input_prefix": "def fibonacci(n):\n    ", "input_suffix": "\n\nprint(fibonacci(10))\n",
          "n_predict": 16, "temperature": 0}
OTHER_SYSTEM = ("You are a meticulous technical writer. Answer in plain prose, cite no sources, and keep every "
                "answer under three sentences. " * 40)


@dataclass
class Turn:
    system: str
    scenario: str
    turn: int
    prompt_tokens: int
    evaluated: int
    new_tokens: int
    ttft_s: float | None  # to the first generated event the client sees
    prefill_s: float | None  # evaluating the prompt (the router's /metrics; direct: its first token)
    decode_tps: float | None
    completion_tokens: int
    text: str


# --------------------------------------------------------------------------- conversations in the dialect


def first_body(agent: str, max_tokens: int) -> dict[str, Any]:
    name, endpoint, _ = AGENTS[agent]
    body = json.loads((RECORDED / name).read_text())
    body["stream"] = True
    body["temperature"] = 0
    body["max_output_tokens" if endpoint == "/v1/responses" else "max_tokens"] = max_tokens
    body.pop("reasoning", None) if endpoint == "/v1/responses" else body.pop("thinking", None)
    return body


def next_body(endpoint: str, body: dict[str, Any], answer: dict[str, Any], follow_up: str) -> dict[str, Any]:
    """`body` plus the router's answer and the CLI's next user turn (tool results first)."""
    body = copy.deepcopy(body)
    calls = answer["calls"]
    if endpoint == "/v1/responses":
        if answer["text"]:
            body["input"].append({"type": "message", "role": "assistant",
                                  "content": [{"type": "output_text", "text": answer["text"]}]})
        for call in calls:
            body["input"].append({"type": "function_call", "call_id": call["id"], "name": call["name"],
                                  "arguments": call["arguments"]})
            body["input"].append({"type": "function_call_output", "call_id": call["id"], "output": TOOL_RESULT})
        body["input"].append({"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": follow_up}]})
        return body
    content: list[dict[str, Any]] = [{"type": "text", "text": answer["text"]}] if answer["text"] else []
    content += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": json.loads(c["arguments"] or "{}")}
                for c in calls]
    body["messages"].append({"role": "assistant", "content": content or [{"type": "text", "text": ""}]})
    results = [{"type": "tool_result", "tool_use_id": c["id"], "content": TOOL_RESULT} for c in calls]
    body["messages"].append({"role": "user", "content": [*results, {"type": "text", "text": follow_up}]})
    return body


def stream_turn(client: httpx.Client, url: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST one streamed turn; its text, tool calls, usage and timing, read from the dialect's events."""
    started = time.perf_counter()
    first = last = None
    text: list[str] = []
    calls: dict[Any, dict[str, str]] = {}
    usage: dict[str, int] = {}
    with client.stream("POST", url + endpoint, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.read()[:500]!r}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            kind, delta = event.get("type", ""), event.get("delta")
            generated = False
            if kind == "response.output_text.delta":
                text.append(delta)
                generated = True
            elif kind == "response.function_call_arguments.delta":
                generated = True
            elif kind == "response.output_item.done" and event["item"]["type"] == "function_call":
                item = event["item"]
                calls[item["call_id"]] = {"id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
            elif kind == "response.completed":
                u = event["response"]["usage"]
                usage = {"prompt": u["input_tokens"], "cached": u["input_tokens_details"]["cached_tokens"],
                         "completion": u["output_tokens"]}
            elif kind == "content_block_start" and event["content_block"]["type"] == "tool_use":
                block = event["content_block"]
                calls[event["index"]] = {"id": block["id"], "name": block["name"], "arguments": ""}
            elif kind == "content_block_delta" and delta["type"] == "text_delta":
                text.append(delta["text"])
                generated = True
            elif kind == "content_block_delta" and delta["type"] == "input_json_delta":
                calls[event["index"]]["arguments"] += delta["partial_json"]
                generated = True
            elif kind == "message_delta":
                u = event["usage"]
                usage = {"prompt": u["input_tokens"] + u["cache_read_input_tokens"],
                         "cached": u["cache_read_input_tokens"], "completion": u["output_tokens"]}
            if generated:
                last = time.perf_counter() - started
                first = last if first is None else first
    return {"text": "".join(text), "calls": list(calls.values()), "usage": usage, "ttft": first, "last": last}


# --------------------------------------------------------------------------- (b) and (c): the same token ids


class Renderer:
    """The router's own rendering of a body into token ids (its template code), for (b) and (c)."""

    def __init__(self, weights: Path, n_ctx: int) -> None:
        from models.backend import BackendOptions
        from models.catalog import LocalSource, ModelSpec
        from models.llama_backend import LlamaBackend

        spec = ModelSpec(id="bench", labels=["chat"], source=LocalSource(path=weights), n_ctx=n_ctx)
        self.backend = LlamaBackend(spec, weights, BackendOptions(n_threads=N_THREADS, n_threads_batch=N_THREADS))
        self.llm = self.backend._llm  # (b) evaluates on this same llama-cpp-python object

    def tokens(self, endpoint: str, body: dict[str, Any]) -> list[int]:
        from router.dialects.endpoints import parse_request

        return list(self.backend._prepare(parse_request(endpoint, body)).tokens)


def cached_prefix(llm: Any, tokens: list[int]) -> int:
    from models.prompt_states import common_prefix

    return common_prefix(llm.input_ids[:llm.n_tokens], tokens)


def direct_turn(llm: Any, tokens: list[int], max_tokens: int) -> tuple[int, float | None, float | None, int]:
    """llama-cpp-python's create_completion on the token ids: its own prefix cache decides the reuse."""
    reused = min(cached_prefix(llm, tokens), len(tokens) - 1)
    started = time.perf_counter()
    first = last = None
    n = 0
    for chunk in llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stream=True):
        now = time.perf_counter()
        first = first if first is not None else now
        last = now
        n += 1
    ttft = None if first is None else first - started
    tps = (n - 1) / (last - first) if first is not None and last and n > 1 and last > first else None
    return len(tokens) - reused, ttft, tps, n


def llama_server(binary: Path, weights: Path, n_ctx: int) -> ServerProcess:
    port = free_port()
    argv = [str(binary), "-m", str(weights), "--host", "127.0.0.1", "--port", str(port), "-c", str(n_ctx),
            "-t", str(N_THREADS), "-tb", str(N_THREADS), "--parallel", "1", "--cache-reuse", "256", "--no-warmup"]
    return ServerProcess("llama-server", argv, port, "/health")


def server_turn(client: httpx.Client, url: str, tokens: list[int], max_tokens: int) -> tuple[int, float | None, float | None, int]:
    started = time.perf_counter()
    first = last = None
    n, evaluated = 0, len(tokens)
    body = {"prompt": tokens, "n_predict": max_tokens, "temperature": 0, "stream": True, "cache_prompt": True}
    with client.stream("POST", url + "/completion", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            now = time.perf_counter()
            if event.get("content"):
                first = first if first is not None else now
                last = now
                n += 1
            if event.get("stop"):
                evaluated = event.get("timings", {}).get("prompt_n", evaluated)
    ttft = None if first is None else first - started
    tps = (n - 1) / (last - first) if first is not None and last and n > 1 and last > first else None
    return evaluated, ttft, tps, n


def prompt_seconds(url: str) -> float:
    """Total prompt-evaluation time the router has reported so far (router_prompt_eval_seconds)."""
    return sum(v for (name, _), v in scrape(url).items() if name == "router_prompt_eval_seconds_sum")


def find_llama_server() -> Path | None:
    from models.llama_server_build import ServerBuildError, find_server  # built by `route engine build-server`

    try:
        return find_server()
    except ServerBuildError:
        return None


# --------------------------------------------------------------------------- the run


def interlopers(client: httpx.Client, url: str, *, router: bool) -> None:
    """An editor's FIM and a second chat on the same model, between two turns of the session."""
    if router:
        client.post(url + "/infill", json=INFILL).raise_for_status()
        client.post(url + "/v1/chat/completions", json={
            "model": "auto", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "system", "content": OTHER_SYSTEM}, {"role": "user", "content": "What is a haiku?"}],
        }).raise_for_status()
    else:  # llama-server: the same two requests in its own API
        client.post(url + "/infill", json=INFILL).raise_for_status()
        client.post(url + "/v1/chat/completions", json={
            "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "system", "content": OTHER_SYSTEM}, {"role": "user", "content": "What is a haiku?"}],
        }).raise_for_status()


def run(args: argparse.Namespace) -> None:
    weights = weights_from(args)
    _, endpoint, n_ctx = AGENTS[args.agent]
    n_ctx = args.n_ctx or n_ctx
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(tmp / "agent-session-catalog.yaml", [
        {"id": "qwen", "labels": ["code_edit", "fim", "chat", "instruct"], "path": weights, "n_ctx": n_ctx}])
    renderer = Renderer(weights, n_ctx)
    binary = None if args.no_llama_server else find_llama_server()
    rows: list[Turn] = []
    metrics: dict = {}
    rss = 0
    for scenario in ("alone", "interleaved"):
        # Fresh servers and a reset (b) per scenario: every system starts the session cold.
        servers = [router_server(config=catalog, memory_budget_bytes=args.budget, idle_ttl_s=0)]
        if binary is not None:
            servers.append(llama_server(binary, weights, n_ctx))
        renderer.llm.reset()
        with running(*servers) as started, httpx.Client(timeout=1800) as client:
            router = started[0]
            server = started[1] if len(started) > 1 else None
            body = first_body(args.agent, args.max_tokens)
            for turn in range(1, args.turns + 1):
                if scenario == "interleaved" and turn > 1:
                    interlopers(client, router.url, router=True)
                    if server is not None:
                        interlopers(client, server.url, router=False)
                tokens = renderer.tokens(endpoint, body)
                before = prompt_seconds(router.url)
                answer = stream_turn(client, router.url, endpoint, body)
                prefill = prompt_seconds(router.url) - before
                u = answer["usage"]
                decode = None
                # From the first token (end of prefill) to the last event: held-back text comes in bursts.
                if answer["last"] and u.get("completion", 0) > 1 and answer["last"] > prefill:
                    decode = (u["completion"] - 1) / (answer["last"] - prefill)
                # (b) right after (a), so both see the machine alike; its cache then holds turn N + output.
                new_tokens = len(tokens) - min(len(tokens) - 1, cached_prefix(renderer.llm, tokens)) \
                    if turn > 1 else len(tokens)
                b_eval, b_ttft, b_tps, b_n = direct_turn(renderer.llm, tokens, args.max_tokens)
                rows.append(Turn("router", scenario, turn, u.get("prompt", 0), u.get("prompt", 0) - u.get("cached", 0),
                                 new_tokens, answer["ttft"], prefill, decode, u.get("completion", 0), answer["text"][:80]))
                rows.append(Turn("direct", scenario, turn, len(tokens), b_eval, new_tokens, b_ttft, b_ttft, b_tps, b_n,
                                 ""))
                if server is not None:
                    c_eval, c_ttft, c_tps, c_n = server_turn(client, server.url, tokens, args.max_tokens)
                    rows.append(Turn("llama-server", scenario, turn, len(tokens), c_eval, new_tokens, c_ttft, c_ttft,
                                     c_tps, c_n, ""))
                print(f"{scenario} turn {turn}: {len(tokens)} prompt tokens, {new_tokens} new; "
                      + "; ".join(f"{r.system} evaluated {r.evaluated}, TTFT {r.ttft_s or 0:.2f} s, "
                                  f"prefill {r.prefill_s or 0:.2f} s"
                                  for r in rows if r.scenario == scenario and r.turn == turn), flush=True)
                body = next_body(endpoint, body, answer, FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)])
            if scenario == "interleaved":
                metrics = scrape(router.url)
                rss = router.rss_bytes()
    report(rows, metrics, rss, args, binary)


def report(rows: list[Turn], metrics: dict, rss: int, args: argparse.Namespace, binary: Path | None) -> None:
    def find(system: str, scenario: str, turn: int) -> Turn | None:
        return next((r for r in rows if (r.system, r.scenario, r.turn) == (system, scenario, turn)), None)

    table = []
    for r in rows:
        base = find("direct", "alone", r.turn)
        ratio = r.prefill_s / base.prefill_s if base and r.prefill_s and base.prefill_s else None
        table.append([r.system, r.scenario, r.turn, r.prompt_tokens, r.new_tokens, r.evaluated,
                      f"{r.ttft_s:.2f}" if r.ttft_s else "-", f"{r.prefill_s:.2f}" if r.prefill_s else "-",
                      f"{ratio:.2f}x" if ratio else "-", f"{r.decode_tps:.1f}" if r.decode_tps else "-"])
    ours = [r for r in rows if r.system == "router"]
    later = [r for r in ours if r.turn > 1]

    def ttft_ratios(scenario: str) -> list[float]:
        out = []
        for r in later:
            base = find("direct", "alone", r.turn)
            if r.scenario == scenario and r.prefill_s and base and base.prefill_s:
                out.append(r.prefill_s / base.prefill_s)
        return out

    first = [(r, find("direct", r.scenario, 1)) for r in ours if r.turn == 1]
    prefill = [(r.prompt_tokens / r.prefill_s) / (b.prompt_tokens / b.prefill_s) for r, b in first
               if b and r.prefill_s and b.prefill_s]
    states_bytes = next((v for (name, _), v in metrics.items() if name == "router_prompt_states_bytes"), 0.0)
    alone, inter = ttft_ratios("alone"), ttft_ratios("interleaved")
    targets = {
        "evaluated <= new + 64, every later turn, both scenarios": all(r.evaluated <= r.new_tokens + 64 for r in later),
        f"prefill turns >= 2 alone <= 1.2x direct (median {median(alone):.2f}x)": bool(alone) and median(alone) <= 1.2,
        f"prefill turns >= 2 interleaved <= 1.5x direct alone (median {median(inter):.2f}x)":
            bool(inter) and median(inter) <= 1.5,
        f"turn-1 prefill tokens/s >= 0.98x direct (median {median(prefill):.2f}x)":
            bool(prefill) and median(prefill) >= 0.98,
        f"saved states {states_bytes / 2**20:.0f} MiB within the budget {args.budget / 2**30:.1f} GiB":
            states_bytes <= args.budget,
    }
    caption = (f"{args.agent} session, {args.turns} turns, {args.max_tokens} tokens a turn, greedy, {N_THREADS} threads"
               + ("" if binary else "; llama-server not built (route engine build-server): (c) skipped"))
    markdown = report_tables("Agent session: prompt reuse per turn",
                             ["system", "scenario", "turn", "prompt", "new", "evaluated", "first event s", "prefill s",
                              "prefill vs direct alone", "decode tok/s"], table, caption, targets)
    write_results(f"agent_session_{args.agent}", {
        "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "turns": [asdict(r) for r in rows],
        "router_rss_bytes": rss, "prompt_states_bytes": states_bytes, "targets": targets, "markdown": markdown,
        "llama_server": str(binary) if binary else None,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", choices=sorted(AGENTS), default="codex")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=None, help="context tokens (default: what the agent needs)")
    parser.add_argument("--budget", type=int, default=3 * 2**30, help="the router's memory budget in bytes")
    parser.add_argument("--no-llama-server", action="store_true", help="leave out (c) even when it is built")
    parser.add_argument("--tmp", default="/tmp/bench-agent-session")
    add_weights_option(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()

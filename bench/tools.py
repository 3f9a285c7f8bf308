"""Tool calling: the router's calls versus direct llama-cpp-python (`chatml-function-calling`), same weights.

30 prompts written for this benchmark (our own text, under the project's licence), each plainly
needing one of six declared tools (JSON schemas with types, `required`, enums, bounds), go through
- the router's in-process backend (`models.llama_backend.LlamaBackend`: the GGUF's own chat
  template, the family's call parser, llama.cpp grammars) with tool_choice `auto`, `auto` with the
  grammar taken away, `required`, and the right tool named;
- llama-cpp-python's own `chatml-function-calling` handler with `auto` and the named tool
  (`required` is an assert in that handler: tried once and reported as unsupported).

Every path is its own loaded model (so no path inherits another's prompt cache), warmed once,
and the paths take each prompt in turn, the order rotated per prompt. Greedy decoding throughout.

A call is valid when its arguments parse as a JSON object, its name is declared and the arguments
validate against that tool's schema (jsonschema); a reply is valid when it holds at least one
call and every call is valid. "Right tool": the first call names the tool the prompt needs.
Also timed: what the parser costs per token, replaying the token pieces the router's own
generations fed it (hermes, streamed and buffered) and the same calls re-spelled in Qwen3-Coder's
XML, cut into the model's tokens (target < 0.05 ms/token); and the router's decode ms/token with
and without a grammar (Finish.usage: generation ms / completion tokens).

    .venv/bin/python bench/tools.py                        # the real run (~20 min here)
    .venv/bin/python bench/tools.py --prompts 3 --max-tokens 64   # a quick look

Prints tables and writes bench/results/tools.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: the repo root, not bench/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import jsonschema  # noqa: E402

import models.llama_backend as llama_backend_module  # noqa: E402
from bench.common import (  # noqa: E402
    N_CTX, N_THREADS, add_weights_option, fmt, machine, median, percentile, print_table, report_tables,
    weights_from, write_results,
)
from models.backend import BackendOptions  # noqa: E402
from models.catalog import ModelSpec  # noqa: E402
from models.chat_messages import openai_tools  # noqa: E402
from models.events import Finish, TextDelta, ToolCallDelta, ToolCallStart  # noqa: E402
from models.llama_backend import LlamaBackend  # noqa: E402
from models.request import Request, SamplingParams, Tool, ToolChoice, text_message  # noqa: E402
from models.tool_formats import FORMATS  # noqa: E402
from models.tool_parser import ToolCallParser  # noqa: E402

TOOLS = (
    Tool("get_weather", "Get the current weather for a city.", {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}),
    Tool("read_file", "Read a text file from the workspace and return its contents.", {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "Path relative to the workspace root"},
                       "max_lines": {"type": "integer", "minimum": 1}},
        "required": ["path"]}),
    Tool("write_file", "Write text to a file in the workspace, creating it if needed.", {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"},
                       "mode": {"type": "string", "enum": ["overwrite", "append"]}},
        "required": ["path", "content"]}),
    Tool("web_search", "Search the web and return the top results.", {
        "type": "object",
        "properties": {"query": {"type": "string"},
                       "max_results": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["query"]}),
    Tool("calculate", "Evaluate an arithmetic expression exactly.", {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. (2 + 3) * 4"}},
        "required": ["expression"]}),
    Tool("send_email", "Send an email.", {
        "type": "object",
        "properties": {"to": {"type": "string", "description": "Recipient address"},
                       "subject": {"type": "string"}, "body": {"type": "string"},
                       "priority": {"type": "string", "enum": ["low", "normal", "high"]}},
        "required": ["to", "subject", "body"]}),
)
SCHEMAS = {t.name: t.parameters for t in TOOLS}

# Written for this benchmark: each one plainly needs exactly one of the tools above.
PROMPTS: list[tuple[str, str]] = [
    ("What's the weather in Paris right now?", "get_weather"),
    ("Is it raining in London today?", "get_weather"),
    ("Tell me the temperature in Tokyo in fahrenheit.", "get_weather"),
    ("How cold is it in Oslo at the moment, in celsius?", "get_weather"),
    ("Check the current weather in New York City.", "get_weather"),
    ("Show me the contents of README.md.", "read_file"),
    ("Open src/main.py and show me the first 20 lines.", "read_file"),
    ("What is inside the file config/settings.yaml?", "read_file"),
    ("Read package.json for me.", "read_file"),
    ("Print the file docs/INSTALL.txt.", "read_file"),
    ("Create hello.py containing a program that prints hello.", "write_file"),
    ("Write a file named greeting.txt containing 'Good morning'.", "write_file"),
    ("Append the line 'TODO: add tests' to todo.txt.", "write_file"),
    ("Create a .gitignore file that ignores __pycache__.", "write_file"),
    ("Save 'print(42)' to answer.py, overwriting whatever is there.", "write_file"),
    ("Search the web for the latest Python release.", "web_search"),
    ("Look up online who won the 2022 football World Cup.", "web_search"),
    ("Find recent news about llama.cpp on the web.", "web_search"),
    ("Search the internet for three results about Rust async runtimes.", "web_search"),
    ("Do a web search for the population of Canada.", "web_search"),
    ("Calculate 1234 * 5678.", "calculate"),
    ("What is (17 + 25) / 6? Use the calculator.", "calculate"),
    ("Compute 2 to the power of 20 with the calculator.", "calculate"),
    ("Evaluate 3.14159 * 12 * 12.", "calculate"),
    ("Use the calculator to work out 99 - 17 * 3.", "calculate"),
    ("Email bob@example.com with the subject 'Lunch' and the body 'Are we still on for noon?'.", "send_email"),
    ("Send an email to alice@example.org saying the build is fixed; subject 'Build'.", "send_email"),
    ("Send a high priority email to ops@example.com, subject 'Disk full', body 'Server db1 is out of disk.'",
     "send_email"),
    ("Write an email to team@example.com titled 'Standup moved' telling them standup is at 10 tomorrow.",
     "send_email"),
    ("Mail carol@example.net: subject 'Invoice', body 'Your invoice is attached.', low priority.", "send_email"),
]

# What the parser sees, recorded per generation (the router's decode loop constructs it by name).
RECORDED: list[dict[str, Any]] = []


class RecordingParser(ToolCallParser):
    """The router's parser, unchanged, keeping the pieces it was fed (for the parser-cost replay)."""

    def __init__(self, fmt: Any, tools: Any, *, buffer_calls: bool) -> None:
        super().__init__(fmt, tools, buffer_calls=buffer_calls)
        self.recorded = {"format": fmt.name, "buffer_calls": buffer_calls, "pieces": []}
        RECORDED.append(self.recorded)

    def feed(self, text: str) -> list:
        self.recorded["pieces"].append(text)
        return super().feed(text)


class NoGrammarBackend(LlamaBackend):
    """The router's backend with its grammar taken away; the parser still reads the calls."""

    def _prepare(self, request: Request) -> Any:
        prep = super()._prepare(request)
        prep.grammar = None
        return prep


# A GGUF without a tool-aware template (the tiny test GGUF) gets Qwen2.5's Hermes form, so the
# script runs end to end on it; the real weights use their own template.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n{% for t in tools %}{{ t | tojson }}\n"
    "{% endfor %}</tools>\nReply with <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n"
    "{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def valid_call(name: str, arguments: str) -> tuple[bool, str]:
    """Whether one call parses, names a declared tool and fits its schema; and why not."""
    try:
        args = json.loads(arguments)
    except ValueError as exc:
        return False, f"arguments are not JSON: {exc}"
    if not isinstance(args, dict):
        return False, "arguments are not a JSON object"
    if name not in SCHEMAS:
        return False, f"undeclared tool {name!r}"
    try:
        jsonschema.validate(args, SCHEMAS[name])
    except jsonschema.ValidationError as exc:
        return False, f"schema: {exc.message}"
    return True, ""


def judge(calls: list[list[str]], want: str) -> dict[str, Any]:
    verdicts = [valid_call(name, args) for name, args in calls]
    return {"valid": bool(calls) and all(ok for ok, _ in verdicts),
            "right_tool": bool(calls) and calls[0][0] == want,
            "why": "no tool call" if not calls else "; ".join(why for ok, why in verdicts if not ok)}


# --------------------------------------------------------------------------- the two sides


def router_call(backend: LlamaBackend, prompt: str, choice: ToolChoice, max_tokens: int) -> dict[str, Any]:
    request = Request("chat", messages=(text_message("user", prompt),), tools=TOOLS, tool_choice=choice,
                      params=SamplingParams(temperature=0.0, max_tokens=max_tokens), stream=False)
    started = time.perf_counter()
    events = list(backend.generate(request, threading.Event()))
    seconds = time.perf_counter() - started
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            calls[e.index] = [e.name, ""]
        elif isinstance(e, ToolCallDelta):
            calls[e.index][1] += e.arguments
    finish = events[-1]
    assert isinstance(finish, Finish)
    raw = "".join(RECORDED[-1]["pieces"]) if RECORDED else ""
    usage = finish.usage
    return {"calls": [calls[i] for i in sorted(calls)], "s": seconds,
            "text": "".join(e.text for e in events if isinstance(e, TextDelta)),
            "finish": finish.reason, "prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.cached_tokens,
            "prompt_ms": usage.prompt_ms, "completion_tokens": usage.completion_tokens,
            "predicted_ms": usage.predicted_ms,
            "ms_per_token": usage.predicted_ms / usage.completion_tokens if usage.completion_tokens else None,
            "raw": raw, "syntax": call_syntax(raw)}


def call_syntax(raw: str) -> str:
    """How the reply spelled its call: inside <tool_call> (what the lazy grammar triggers on), in a
    ```json fence, as bare JSON, or no call at all."""
    if "<tool_call>" in raw:
        return "<tool_call>"
    if "```" in raw and '"name"' in raw:
        return "fenced"
    if raw.lstrip().startswith("{"):
        return "bare JSON"
    return "text"


def direct_call(llm: Any, prompt: str, choice: Any, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], tools=openai_tools(TOOLS),
                                         tool_choice=choice, temperature=0.0, repeat_penalty=1.0,
                                         max_tokens=max_tokens)
    except Exception as exc:  # noqa: BLE001 - `required` is an assert in the handler
        return {"calls": [], "s": time.perf_counter() - started, "text": "", "error": f"{type(exc).__name__}: {exc}"}
    message = out["choices"][0]["message"]
    calls = [[c["function"]["name"], c["function"]["arguments"]] for c in message.get("tool_calls") or []]
    return {"calls": calls, "s": time.perf_counter() - started, "text": message.get("content") or "",
            "finish": out["choices"][0].get("finish_reason")}


# --------------------------------------------------------------------------- parser cost


def time_parser(fmt_name: str, pieces: list[str], buffered: bool, reps: int) -> list[float]:
    """ms per token to feed `pieces` (one per token) through a fresh parser and finish it, `reps` times."""
    fmt_obj = FORMATS[fmt_name]
    out = []
    for _ in range(reps):
        parser = ToolCallParser(fmt_obj, TOOLS, buffer_calls=buffered)
        started = time.perf_counter()
        for p in pieces:
            parser.feed(p)
        parser.finish()
        out.append((time.perf_counter() - started) * 1000.0 / len(pieces))
    return out


def xml_reply(text: str, calls: list[list[str]]) -> str:
    """The same reply as Qwen3-Coder writes calls (`<function=N>` / `<parameter=K>` lines)."""
    parts = [text] if text else []
    for name, arguments in calls:
        try:
            args = json.loads(arguments)
        except ValueError:
            continue
        lines = [f"<tool_call>\n<function={name}>"]
        for key, value in (args.items() if isinstance(args, dict) else ()):
            value = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"<parameter={key}>\n{value}\n</parameter>")
        lines.append("</function>\n</tool_call>")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def token_pieces(backend: LlamaBackend, text: str) -> list[str]:
    """`text` cut where the model's tokenizer cuts it (special tokens kept as text)."""
    llm = backend._llm
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    pieces, pending = [], b""
    for i in ids:
        pending += llm.detokenize([i], special=True)
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:  # a character split across tokens: the router emits it whole
            continue
    return [p for p in pieces if p]


def parser_cost(backend: LlamaBackend, rows: list[dict], reps: int) -> dict[str, Any]:
    hermes = [r["pieces"] for r in RECORDED if r["format"] == "hermes" and len(r["pieces"]) >= 4]
    xml = []
    for r in rows:
        if r["system"].startswith("router") and r["calls"]:
            pieces = token_pieces(backend, xml_reply(r["text"], r["calls"]))
            if len(pieces) >= 4:
                xml.append(pieces)
    out: dict[str, Any] = {}
    for label, fmt_name, replies, buffered in (("hermes, streamed", "hermes", hermes, False),
                                               ("hermes, buffered", "hermes", hermes, True),
                                               ("qwen3_coder XML, streamed", "qwen3_coder", xml, False),
                                               ("qwen3_coder XML, buffered", "qwen3_coder", xml, True)):
        samples: list[float] = []
        per_reply: list[float] = []
        for pieces in replies:
            times = time_parser(fmt_name, pieces, buffered, reps)
            samples += times
            per_reply.append(median(times))
        out[label] = {"replies": len(replies), "tokens": sum(len(p) for p in replies),
                      "median_ms_per_token": median(samples), "p95_ms_per_token": percentile(samples, 95),
                      "worst_reply_median_ms_per_token": max(per_reply, default=float("nan"))}
    return out


# --------------------------------------------------------------------------- run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="How many of the fixed prompts.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parser-reps", type=int, default=200, help="Replays of each recorded reply per parser.")
    parser.add_argument("--name", default="tools", help="Result file name in bench/results/.")
    add_weights_option(parser)
    args = parser.parse_args()

    import llama_cpp

    weights = weights_from(args)
    prompts = PROMPTS[: args.prompts]
    info = machine()
    info["jsonschema"] = importlib.metadata.version("jsonschema")
    llama_backend_module.ToolCallParser = RecordingParser  # record what the decode loop feeds it

    options = BackendOptions(n_threads=N_THREADS, n_threads_batch=N_THREADS)
    spec = ModelSpec(id="bench-tools", source={"kind": "local", "path": str(weights)}, n_ctx=N_CTX)
    probe = LlamaBackend(spec, weights, options)
    if probe.tool_format is None:  # e.g. the tiny test GGUF: give it a Hermes template
        probe.close()
        spec = spec.model_copy(update={"chat_template": HERMES_TEMPLATE})
        probe = LlamaBackend(spec, weights, options)
    tool_format = probe.tool_format.name if probe.tool_format else None

    # One loaded model per path: none sees another's prompt cache. Page cache holds one copy of the file.
    router = {"router auto": probe, "router auto, no grammar": NoGrammarBackend(spec, weights, options),
              "router required": LlamaBackend(spec, weights, options),
              "router named": LlamaBackend(spec, weights, options)}

    def direct_llama() -> Any:
        return llama_cpp.Llama(str(weights), n_ctx=N_CTX, n_batch=512, n_threads=N_THREADS,
                               n_threads_batch=N_THREADS, chat_format="chatml-function-calling", verbose=False)

    direct = {"direct auto": direct_llama(), "direct named": direct_llama()}
    paths: dict[str, Callable[[str, str], dict]] = {
        "router auto": lambda p, w: router_call(router["router auto"], p, ToolChoice("auto"), args.max_tokens),
        "router auto, no grammar": lambda p, w: router_call(router["router auto, no grammar"], p, ToolChoice("auto"),
                                                            args.max_tokens),
        "router required": lambda p, w: router_call(router["router required"], p,
                                                    ToolChoice("required", parallel=False), args.max_tokens),
        "router named": lambda p, w: router_call(router["router named"], p, ToolChoice("function", w, parallel=False),
                                                 args.max_tokens),
        "direct auto": lambda p, w: direct_call(direct["direct auto"], p, "auto", args.max_tokens),
        "direct named": lambda p, w: direct_call(direct["direct named"], p,
                                                 {"type": "function", "function": {"name": w}}, args.max_tokens),
    }
    names = list(paths)

    # llama-cpp-python's handler asserts on anything but auto / none / a named function.
    required_probe = direct_call(direct["direct auto"], prompts[0][0], "required", args.max_tokens)
    direct_required = required_probe.get("error") or "answered (unexpected)"
    print(f"direct required: {direct_required}", flush=True)

    warm = ("Say hello.", "calculate")  # loads weights into caches and each path's tools prefix into its KV cache
    for name in names:
        paths[name](*warm)
    RECORDED.clear()

    rows: list[dict[str, Any]] = []
    order = names[:]
    run_started = time.perf_counter()
    for i, (prompt, want) in enumerate(prompts):
        for name in order:
            r = paths[name](prompt, want)
            r.update(judge(r["calls"], want), system=name, prompt=i, want=want)
            rows.append(r)
        order = order[1:] + order[:1]
        done = [r for r in rows if r["prompt"] == i]
        print(f"prompt {i + 1}/{len(prompts)} ({time.perf_counter() - run_started:.0f} s): "
              + ", ".join(f"{r['system']} {'ok' if r['valid'] else 'INVALID'}" for r in done), flush=True)

    cost = parser_cost(probe, rows, args.parser_reps)
    for backend in router.values():
        backend.close()
    for llm in direct.values():
        llm.close()
    report(rows, names, cost, direct_required, info, args, weights, tool_format, len(prompts))


def report(rows: list[dict], names: list[str], cost: dict[str, Any], direct_required: str, info: dict,
           args: argparse.Namespace, weights: Path, tool_format: str | None, n_prompts: int) -> None:
    by: dict[str, list[dict]] = {n: [r for r in rows if r["system"] == n] for n in names}
    by_prompt: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], {})[r["system"]] = r

    def ratio_vs(name: str, base: str, key: str) -> float:
        ratios = [p[name][key] / p[base][key] for p in by_prompt.values()
                  if p[name].get(key) and p[base].get(key)]
        return median(ratios)

    scores: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        scores[name] = {
            "valid": sum(r["valid"] for r in rs), "right_tool": sum(r["right_tool"] for r in rs), "n": len(rs),
            "valid_share": sum(r["valid"] for r in rs) / len(rs),
            "right_tool_share": sum(r["right_tool"] for r in rs) / len(rs),
            "median_s": median([r["s"] for r in rs]),
            "latency_vs_direct_auto": ratio_vs(name, "direct auto", "s"),
            "median_completion_tokens": median([r.get("completion_tokens") for r in rs]),
            "median_decode_ms_per_token": median([r.get("ms_per_token") for r in rs]),
            "call_syntax": dict(Counter(r["syntax"] for r in rs if "syntax" in r)),
            "invalid": [{"prompt": PROMPTS[r["prompt"]][0], "want": r["want"], "why": r["why"], "calls": r["calls"],
                         "text": r["text"][:400], "raw": r.get("raw", "")[:400], "finish": r.get("finish")}
                        for r in rs if not r["valid"]],
        }
    scores["direct required"] = {"unsupported": direct_required}

    rows_table = []
    for name in names:
        s = scores[name]
        rows_table.append([name, f"{s['valid']}/{s['n']} ({s['valid_share']:.0%})",
                           f"{s['right_tool']}/{s['n']} ({s['right_tool_share']:.0%})", fmt(s["median_s"], 2),
                           fmt(s["latency_vs_direct_auto"], 2, "x"), fmt(s["median_completion_tokens"], 0),
                           fmt(s["median_decode_ms_per_token"], 1),
                           ", ".join(f"{k} {v}" for k, v in sorted(s["call_syntax"].items())) or "-"])
    rows_table.append(["direct required", "unsupported", "-", "-", "-", "-", "-", "-"])

    # Decode cost of the grammar, per prompt, against the same prompt without it.
    grammar_cost = {name: ratio_vs(name, "router auto, no grammar", "ms_per_token")
                    for name in ("router auto", "router required", "router named")}
    print_table("Router decode ms/token with a grammar vs without (median of per-prompt ratios)",
                ["path", "decode ms/token", "vs no grammar"],
                [[n, fmt(scores[n]["median_decode_ms_per_token"], 1), fmt(grammar_cost[n], 3, "x")]
                 for n in grammar_cost] + [["router auto, no grammar",
                                            fmt(scores["router auto, no grammar"]["median_decode_ms_per_token"], 1),
                                            "1.000x"]])
    cost_rows = [[label, c["replies"], c["tokens"], fmt(c["median_ms_per_token"], 4), fmt(c["p95_ms_per_token"], 4),
                  fmt(c["worst_reply_median_ms_per_token"], 4)] for label, c in cost.items()]
    print_table(f"Parser cost per token ({args.parser_reps} replays per reply)",
                ["parser", "replies", "tokens", "median ms/token", "p95 ms/token", "worst reply (median)"], cost_rows)

    worst_parser = max((c["median_ms_per_token"] for c in cost.values() if c["replies"]), default=float("nan"))
    targets = {
        "router required: 100% valid": scores["router required"]["valid_share"] == 1.0,
        "router named: 100% valid": scores["router named"]["valid_share"] == 1.0,
        "router auto valid >= direct llama-cpp-python auto": scores["router auto"]["valid_share"]
        >= scores["direct auto"]["valid_share"],
        f"parser < 0.05 ms/token (slowest median: {worst_parser:.4f})": worst_parser < 0.05,
    }
    markdown = report_tables(
        f"Tool calls: {weights.name} ({tool_format}), {n_prompts} prompts needing a tool, greedy, "
        f"max_tokens {args.max_tokens}",
        ["path", "valid", "right tool", "median s", "s vs direct auto", "completion tokens", "decode ms/token",
         "call written as"],
        rows_table, "valid: >= 1 call, every call parses, names a declared tool, fits its schema", targets)
    markdown += "\n\n" + "\n".join(["| parser | replies | tokens | median ms/token | p95 ms/token | worst reply |",
                                    "|---|---|---|---|---|---|"]
                                   + ["| " + " | ".join(str(c) for c in row) + " |" for row in cost_rows])
    for name in names:
        for bad in scores[name]["invalid"]:
            print(f"INVALID {name}: {bad['prompt']!r} -> {bad['why']}; calls {bad['calls']}; "
                  f"text {bad['text'][:160]!r}; raw {bad['raw'][:160]!r}")
    write_results(args.name, {
        "model": weights.name, "weights": str(weights), "tool_format": tool_format, "prompts": n_prompts,
        "tools": [t.name for t in TOOLS], "max_tokens": args.max_tokens, "scores": scores,
        "grammar_decode_ratio_vs_none": grammar_cost, "parser_ms_per_token": cost, "targets": targets,
        "markdown": markdown, "machine": info, "date": info["utc"][:10],
        "rows": [{k: v for k, v in r.items()} for r in rows],
    })


if __name__ == "__main__":
    main()

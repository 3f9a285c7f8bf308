"""Tool calling: the router's calls versus direct llama-cpp-python (`chatml-function-calling`), same weights.

30 prompts written for this benchmark (ours, MIT like the project), each plainly needing one of
five declared tools, go through:
- the router's in-process backend (the GGUF's own template, the family parser, llama.cpp grammars)
  with tool_choice auto, auto with the grammar off, required, and the right tool named;
- llama-cpp-python's `chatml-function-calling` handler with auto and the named tool (`required`
  hits an assert in that handler, so it has no row).

A call is valid when its arguments parse as a JSON object, its name is declared and the arguments
validate against that tool's schema (jsonschema). Also timed: the parser's own cost per token,
feeding recorded replies piece by piece (target < 0.05 ms/token), and decode ms/token with and
without a grammar. Greedy decoding throughout.

    .venv/bin/python bench/tools.py [--n 30] [--model PATH] [--max-tokens 96]

Prints tables and writes bench/results/tools.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402

from bench.common import (  # noqa: E402
    N_THREADS, git_commit, machine, median, qwen_weights, report_tables, write_results,
)
from models.catalog import ModelSpec  # noqa: E402
from models.chat_messages import openai_tools  # noqa: E402
from models.events import TextDelta, ToolCallDelta, ToolCallStart  # noqa: E402
from models.llama_backend import LlamaBackend  # noqa: E402
from models.request import Request, SamplingParams, Tool, ToolChoice, text_message  # noqa: E402
from models.tool_formats import FORMATS  # noqa: E402
from models.tool_parser import ToolCallParser  # noqa: E402

TOOLS = (
    Tool("get_weather", "Current weather for a city.", {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}),
    Tool("read_file", "Read a file from the workspace.", {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    Tool("write_file", "Write text to a file in the workspace.", {
        "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"]}),
    Tool("web_search", "Search the web.", {
        "type": "object", "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
        "required": ["query"]}),
    Tool("calculate", "Evaluate an arithmetic expression.", {
        "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}),
)
PROMPTS = [
    ("What's the weather in Paris right now?", "get_weather"),
    ("Is it raining in London today?", "get_weather"),
    ("Tell me the temperature in Tokyo in fahrenheit.", "get_weather"),
    ("How cold is it in Oslo at the moment?", "get_weather"),
    ("Check the current weather in New York City.", "get_weather"),
    ("Weather forecast for Berlin, please, in celsius.", "get_weather"),
    ("Show me the contents of README.md.", "read_file"),
    ("Open src/main.py and show it to me.", "read_file"),
    ("What is inside the file config/settings.yaml?", "read_file"),
    ("Read package.json.", "read_file"),
    ("Print the file docs/INSTALL.txt.", "read_file"),
    ("Load notes/todo.md and show me what it says.", "read_file"),
    ("Create hello.py that prints hello.", "write_file"),
    ("Write a file named greeting.txt containing 'Good morning'.", "write_file"),
    ("Save the text 'TODO: tests' into todo.txt.", "write_file"),
    ("Create a .gitignore file that ignores __pycache__.", "write_file"),
    ("Write 'print(42)' to answer.py.", "write_file"),
    ("Make a file called empty.md with the content '# Title'.", "write_file"),
    ("Search the web for the latest Python release.", "web_search"),
    ("Look up who won the 2022 football World Cup.", "web_search"),
    ("Find recent news about llama.cpp on the web.", "web_search"),
    ("Search online for the best pizza recipe.", "web_search"),
    ("Find three web results about Rust async runtimes.", "web_search"),
    ("Search the internet for the population of Canada.", "web_search"),
    ("Calculate 1234 * 5678.", "calculate"),
    ("What is (17 + 25) / 6? Use the calculator.", "calculate"),
    ("Compute 2 to the power of 20.", "calculate"),
    ("Evaluate 3.14159 * 12 * 12.", "calculate"),
    ("Use the calculator to work out 99 - 17 * 3.", "calculate"),
    ("Calculate the sum 18 + 27 + 36 + 45.", "calculate"),
]
SCHEMAS = {t.name: t.parameters for t in TOOLS}


def valid(name: str, arguments: str) -> bool:
    try:
        args = json.loads(arguments)
    except ValueError:
        return False
    if name not in SCHEMAS or not isinstance(args, dict):
        return False
    try:
        jsonschema.validate(args, SCHEMAS[name])
    except jsonschema.ValidationError:
        return False
    return True


class NoGrammarBackend(LlamaBackend):
    """The router's backend with its grammar taken away (the parser still reads the calls)."""

    def _prepare(self, request):
        prep = super()._prepare(request)
        prep.grammar = None
        return prep


def router_calls(backend: LlamaBackend, prompt: str, choice: ToolChoice, max_tokens: int) -> dict:
    request = Request("chat", messages=(text_message("user", prompt),), tools=TOOLS, tool_choice=choice,
                      params=SamplingParams(temperature=0.0, max_tokens=max_tokens))
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
    per_token = finish.usage.predicted_ms / max(1, finish.usage.completion_tokens)
    return {"calls": list(calls.values()), "s": seconds, "ms_per_token": per_token,
            "text": "".join(e.text for e in events if isinstance(e, TextDelta))}


def direct_calls(llm, prompt: str, choice, max_tokens: int) -> dict:
    started = time.perf_counter()
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], tools=openai_tools(TOOLS),
                                     tool_choice=choice, temperature=0.0, max_tokens=max_tokens)
    message = out["choices"][0]["message"]
    calls = [[c["function"]["name"], c["function"]["arguments"]] for c in message.get("tool_calls") or []]
    return {"calls": calls, "s": time.perf_counter() - started, "text": message.get("content") or ""}


def score(results: list[dict], expected: list[str]) -> dict:
    first = [r["calls"][0] if r["calls"] else None for r in results]
    return {
        "valid_share": sum(1 for c in first if c and valid(*c)) / len(results),
        "right_tool_share": sum(1 for c, want in zip(first, expected) if c and c[0] == want) / len(results),
        "median_s": median([r["s"] for r in results]),
        "median_ms_per_token": median([r["ms_per_token"] for r in results]) if "ms_per_token" in results[0] else None,
        "invalid_examples": [{"calls": r["calls"], "text": r["text"][:200]} for r, c in zip(results, first)
                             if not (c and valid(*c))][:3],
    }


def parser_cost(backend: LlamaBackend, replies: list[str]) -> dict:
    """Median ms per token the parser adds, on replies cut into the model's own token pieces."""
    pieces_per_reply = []
    for reply in replies:
        ids = backend._llm.tokenize(reply.encode(), add_bos=False, special=True)
        pieces_per_reply.append([backend._llm.detokenize([i], special=True).decode("utf-8", "replace") for i in ids])
    out = {}
    for family, buffered in (("hermes", False), ("hermes", True), ("qwen3_coder", False)):
        samples = []
        for pieces in pieces_per_reply:
            for _ in range(20):
                parser = ToolCallParser(FORMATS[family], TOOLS, buffer_calls=buffered)
                started = time.perf_counter()
                for p in pieces:
                    parser.feed(p)
                parser.finish()
                samples.append((time.perf_counter() - started) * 1000 / len(pieces))
        out[f"{family}{' buffered' if buffered else ''}"] = median(samples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=len(PROMPTS))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    path = args.model or qwen_weights()
    prompts = PROMPTS[: args.n]
    expected = [want for _, want in prompts]
    spec = ModelSpec(id="bench", source={"kind": "local", "path": str(path)}, n_ctx=4096)

    modes = {
        "auto": ToolChoice("auto"),
        "required": ToolChoice("required", parallel=False),
        "named": None,  # the expected tool, per prompt
    }
    scores: dict[str, dict] = {}
    backend = LlamaBackend(spec, path)
    for mode, choice in modes.items():
        results = [router_calls(backend, p, choice or ToolChoice("function", want, parallel=False), args.max_tokens)
                   for p, want in prompts]
        scores[f"router {mode}"] = score(results, expected)
    replies = ['<tool_call>\n{"name": "write_file", "arguments": {"path": "hello.py", "content": "print(\\"hello\\")\\n"}}'
               '\n</tool_call>', "Sure, here is how you would do it: first open the file, then write to it.",
               '<tool_call>\n<function=write_file>\n<parameter=path>\nhello.py\n</parameter>\n<parameter=content>\n'
               'print("hello")\n</parameter>\n</function>\n</tool_call>']
    cost = parser_cost(backend, replies)
    backend.close()
    plain = NoGrammarBackend(spec, path)
    results = [router_calls(plain, p, ToolChoice("auto"), args.max_tokens) for p, _ in prompts]
    scores["router auto, no grammar"] = score(results, expected)
    plain.close()

    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=4096, n_batch=512, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                          chat_format="chatml-function-calling", verbose=False)
    for mode in ("auto", "named"):
        results = [direct_calls(llm, p, "auto" if mode == "auto" else {"type": "function", "function": {"name": want}},
                                args.max_tokens) for p, want in prompts]
        scores[f"llama-cpp-python chatml-function-calling {mode}"] = score(results, expected)

    rows = [[name, f"{s['valid_share']:.0%}", f"{s['right_tool_share']:.0%}", f"{s['median_s']:.2f}",
             "" if s["median_ms_per_token"] is None else f"{s['median_ms_per_token']:.1f}"] for name, s in scores.items()]
    cost_ms = max(cost.values())
    targets = {
        "required: 100% valid": scores["router required"]["valid_share"] == 1.0,
        "named: 100% valid": scores["router named"]["valid_share"] == 1.0,
        "auto >= direct llama-cpp-python auto": scores["router auto"]["valid_share"]
        >= scores["llama-cpp-python chatml-function-calling auto"]["valid_share"],
        f"parser < 0.05 ms/token (worst family: {cost_ms:.4f})": cost_ms < 0.05,
    }
    markdown = report_tables(f"Tool calls on {path.name}, {len(prompts)} prompts, greedy",
                             ["path", "valid", "right tool", "median s", "decode ms/token"], rows,
                             "valid: arguments parse, name declared, schema holds (first call)", targets)
    write_results("tools", {"model": path.name, "prompts": len(prompts), "max_tokens": args.max_tokens,
                            "scores": scores, "parser_ms_per_token": cost, "targets": targets,
                            "markdown": markdown, "commit": git_commit(), "machine": machine(),
                            "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()

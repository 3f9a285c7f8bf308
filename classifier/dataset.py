"""Builds the shipped data (data/train.jsonl, data/dev.jsonl) from the team's shared training set,
the hand-checked relabels and the hand-written rows.  Run once, by hand, when the data changes:

    python -m classifier.dataset --shared /work/shared/data

Whole sources are held out for the dev set (DEV_SOURCES) and rendered as real requests in every
dialect; Dolly (CC-BY-SA-3.0, share-alike) and MT-Bench-101 (reserved for the project's acceptance
evaluation) are left out entirely.  A harder dev set (data/dev_hard.jsonl, HARD_DEV_SOURCES) holds
agent requests the real CLIs sent (data/agent_captures.jsonl) and project-authored hard cases
(data/handwritten_hard.jsonl).  See data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from classifier.text import ELLIPSIS

DATA_DIR = Path(__file__).parent / "data"
DEV_SOURCES = frozenset(
    {
        "mbpp_test",
        "quixbugs_python",
        "oasst_en100_trees",
        "fastchat_dummy_identity",
        "self_instruct_user_oriented",
        "oasst_octopack_code_prompts",
        "humaneval_infilling",
    }
)
HARD_DEV_SOURCES = frozenset({"agent_captures_dev", "handwritten_hard_dev"})
EXCLUDED_SOURCES = {
    "dolly_subset": "CC-BY-SA-3.0 (share-alike): not shipped in an MIT project",
    "mt_bench_101": "MT-Bench-101 is reserved for the project's acceptance evaluation (issue 16)",
}
# Stored text keeps more than the model reads (text.CURRENT_HEAD/TAIL), so re-reading is lossless.
STORE_HEAD, STORE_TAIL = 1280, 320
GENERIC_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful, respectful and honest assistant. Answer as helpfully as possible.",
    "Answer concisely.",
)
FIM_TEMPLATES = {
    "qwen": "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>",
    "starcoder": "<fim_prefix>{p}<fim_suffix>{s}<fim_middle>",
    "deepseek": "<｜fim▁begin｜>{p}<｜fim▁hole｜>{s}<｜fim▁end｜>",
    "codellama": "<PRE> {p} <SUF>{s} <MID>",
    "codestral": "[SUFFIX]{s}[PREFIX]{p}",
    "seed-coder": "<[fim-prefix]>{p}<[fim-suffix]>{s}<[fim-middle]>",
    "qwen-repo": "<|repo_name|>demo\n<|file_sep|>src/main.py\n<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>",
}


def clip(text: str) -> str:
    if len(text) <= STORE_HEAD + STORE_TAIL:
        return text
    return text[:STORE_HEAD] + ELLIPSIS + text[-STORE_TAIL:]


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def apply_relabels(rows: list[dict], relabels: list[dict]) -> int:
    by_id = {r["id"]: r for r in relabels}
    changed = 0
    for row in rows:
        fix = by_id.get(row["id"])
        if fix and row["label"] != fix["label"]:
            row.setdefault("meta", {})["relabel"] = {"from": row["label"], "why": fix["why"]}
            row["label"] = fix["label"]
            changed += 1
    return changed


def training_row(row: dict) -> dict:
    keep = {k: row[k] for k in ("id", "source", "label") if k in row}
    keep["messages"] = [{"role": m["role"], "content": clip(m["content"])} for m in row["messages"]]
    if row.get("meta", {}).get("relabel"):
        keep["relabel"] = row["meta"]["relabel"]
    if row.get("meta", {}).get("heuristic"):
        keep["noisy_label"] = True
    return keep


def render_messages(row: dict, rng: random.Random, agent_dialects: bool = False) -> list[dict]:
    """Eval lines for a messages row: both chat dialects (and the Anthropic and Responses ones if
    asked), plus the three raw-prompt ones if single-turn."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    if rng.random() < 0.3:
        messages = [{"role": "system", "content": rng.choice(GENERIC_SYSTEM_PROMPTS)}] + messages
    label, source = row["label"], row["source"]
    lines = [
        {"endpoint": "/v1/chat/completions", "body": {"model": "auto", "messages": messages}},
        {"endpoint": "/api/chat", "body": {"model": "auto", "messages": messages, "stream": False}},
    ]
    if agent_dialects:
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        anthropic = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": turns}
        responses = {"model": "auto", "input": turns}
        if system:
            anthropic["system"], responses["instructions"] = system[0], system[0]
        lines += [{"endpoint": "/v1/messages", "body": anthropic}, {"endpoint": "/v1/responses", "body": responses}]
    users = [m for m in row["messages"] if m["role"] == "user"]
    if len(users) == 1 and len(row["messages"]) == 1:
        prompt = users[0]["content"]
        lines += [
            {"endpoint": "/v1/completions", "body": {"model": "auto", "prompt": prompt, "max_tokens": 256}},
            {"endpoint": "/completion", "body": {"prompt": prompt, "n_predict": 256}},
            {"endpoint": "/api/generate", "body": {"model": "auto", "prompt": prompt, "stream": False}},
        ]
    return [dict(line, label=label, source=source) for line in lines]


def render_fim(row: dict, form: int) -> dict:
    """One eval line for a FIM row, in the `form`-th of the FIM request shapes clients send."""
    p, s = row["prefix"], row["suffix"]
    templates = list(FIM_TEMPLATES.items())
    forms = [
        ("/infill", {"input_prefix": p, "input_suffix": s, "input_extra": [], "n_predict": 64, "cache_prompt": True}),
        ("/v1/completions", {"model": "auto", "prompt": p, "suffix": s, "max_tokens": 64}),
        ("/api/generate", {"model": "auto", "prompt": p, "suffix": s, "stream": False}),
        ("/v1/completions", {"model": "auto", "prompt": p, "max_tokens": 64}),
        ("/completion", {"prompt": p, "n_predict": 64}),
        ("/api/generate", {"model": "auto", "prompt": p, "raw": True, "stream": False}),
    ]
    endpoints = ["/completion", "/v1/completions", "/api/generate"]
    for i, (family, template) in enumerate(templates):
        body_prompt = template.format(p=p, s=s)
        endpoint = endpoints[i % len(endpoints)]
        body = {"prompt": body_prompt}
        if endpoint != "/completion":
            body["model"] = "auto"
        if endpoint == "/api/generate" and i % 2 == 0:
            body["raw"] = True
        forms.append((endpoint, body))
    endpoint, body = forms[form % len(forms)]
    return {"endpoint": endpoint, "body": body, "label": "fim", "source": row["source"]}


def build(shared: Path, out: Path = DATA_DIR, seed: int = 0, fim_rows: int = 650) -> dict:
    rows = read_jsonl(shared / "train.jsonl")
    relabelled = apply_relabels(rows, read_jsonl(out / "relabel.jsonl"))
    handwritten = read_jsonl(out / "handwritten.jsonl")
    rng = random.Random(seed)
    train, dev_rows, fim = [], [], []
    for row in rows:
        if row["source"] in EXCLUDED_SOURCES:
            continue
        if row["source"] in DEV_SOURCES:
            (fim if row["label"] == "fim" else dev_rows).append(row)
        elif "messages" in row:
            train.append(training_row(row))
    train += [training_row(r) for r in handwritten]
    dev = [line for row in dev_rows for line in render_messages(row, rng)]
    rng.shuffle(fim)
    dev += [render_fim(row, i) for i, row in enumerate(fim[:fim_rows])]

    hard = read_jsonl(out / "handwritten_hard.jsonl")
    captures = read_jsonl(out / "agent_captures.jsonl")
    train += [training_row(r) for r in hard if r["source"] not in HARD_DEV_SOURCES]
    train += chained_conversations([r for r in train if len(r["messages"]) == 1], random.Random(seed + 1))
    train += [agent_row(line) for line in captures if line["source"] not in HARD_DEV_SOURCES]
    hard_rng = random.Random(seed + 2)
    dev_hard = [line for row in hard if row["source"] in HARD_DEV_SOURCES
                for line in render_messages(row, hard_rng, agent_dialects=True)]
    dev_hard += [agent_line(line) for line in captures if line["source"] in HARD_DEV_SOURCES]
    _write(out / "train.jsonl", train)
    _write(out / "dev.jsonl", dev)
    _write(out / "dev_hard.jsonl", dev_hard)
    return {
        "relabelled": relabelled,
        "train": dict(Counter(r["label"] for r in train)),
        "train_sources": dict(Counter(r["source"] for r in train)),
        "dev": dict(Counter(line["label"] for line in dev)),
        "dev_endpoints": dict(Counter(line["endpoint"] for line in dev)),
        "dev_hard": dict(Counter(line["label"] for line in dev_hard)),
        "dev_hard_sources": dict(Counter(line["source"] for line in dev_hard)),
        "dev_hard_endpoints": dict(Counter(line["endpoint"] for line in dev_hard)),
    }


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def agent_row(line: dict) -> dict:
    """A training row for an agent capture: its template and prompt (classifier/agent_data.py)."""
    keep = {k: line[k] for k in ("endpoint", "template", "prompt", "label", "source")}
    return {"id": f"{line['source']}-{line['template']}-{line['prompt'][:40]}", **keep}


def agent_line(line: dict) -> dict:
    return {k: line[k] for k in ("endpoint", "template", "prompt", "label", "source", "cli")}


# Earlier turns for chained conversations: the model must learn that the current turn decides.
_CODE_FOLLOW_UPS = (
    "now add error handling", "can you write tests for it?", "make it faster", "translate that to Go",
    "add type hints", "it fails on an empty input, fix it", "refactor it into smaller functions",
    "explain line 3", "rewrite it without recursion", "add docstrings",
)
_REPLIES_CODE = (
    "Here is the code:\n```python\ndef solve(items):\n    return sorted(items)\n```",
    "Sure, here it is:\n```js\nfunction run(input) {\n  return input.map(x => x * 2);\n}\n```",
    "The bug is on the second line: the index starts at 1 instead of 0.",
)
_REPLIES_OTHER = (
    "Sure! Here are a few ideas you might like.", "Good question. In short: it depends on the season.",
    "Here is a short overview.", "Of course. Let me know if you want more detail.",
)
CHAINED_ROWS = 1500


def chained_conversations(single: list[dict], rng: random.Random, n: int = CHAINED_ROWS) -> list[dict]:
    """Multi-turn training rows built from single-turn ones: an earlier exchange on one topic, then
    a current turn on another (or a short code follow-up); labelled by the current turn alone."""
    code = [r for r in single if r["label"] == "code_edit"]
    other = [r for r in single if r["label"] != "code_edit"]
    rows = []
    for i in range(n):
        first = rng.choice(code if i % 2 == 0 else other)
        first_code = first["label"] == "code_edit"
        reply = rng.choice(_REPLIES_CODE if first_code else _REPLIES_OTHER)
        if first_code and i % 6 == 0:
            turn, label = rng.choice(_CODE_FOLLOW_UPS), "code_edit"
        else:
            last = rng.choice(other if (i // 2) % 2 == 0 else code)
            turn, label = last["messages"][-1]["content"], "code_edit" if last["label"] == "code_edit" else "chat"
        messages = first["messages"] + [{"role": "assistant", "content": reply}, {"role": "user", "content": turn}]
        rows.append({"id": f"chained-{i:04d}", "source": "chained_conversations", "label": label, "messages": messages})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="folder holding the shared train.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.shared, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()

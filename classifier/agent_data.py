"""Agent-shaped labelled requests, from bodies the real CLIs sent (tests/capture_agent_requests.py).

A CLI's request for one prompt differs from its request for another only in the prompt (and in
ids, temp paths and dates), so the shipped data keeps one template body per CLI, settings variant
and request kind (`data/agent_templates.json`, the prompt replaced by PLACEHOLDER) and a line per
capture naming its template and prompt. `expand` rebuilds the body; `build` checks, for every
capture, that its template with its own prompt gives back the body it sent (volatile fields aside).

    python -m classifier.agent_data --captures DIR --prompts PROMPTS.jsonl --source NAME --out FILE.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from classifier.agent_wrappers import side_task

DATA_DIR = Path(__file__).parent / "data"
TEMPLATES_FILE = DATA_DIR / "agent_templates.json"
PLACEHOLDER = "\u27e6PROMPT\u27e7"
# What changes between two runs of a CLI whatever the prompt: temp dirs, ids, dates, times.
_VOLATILE = re.compile(
    r"[/-]tmp[/-]capture-[\w-]+|cc_version=[\w.]+|\d{10,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
    r"\b(?:msg|fc|fco|at|resp|rs|call)_[0-9a-zA-Z-]{8,}\b|[0-9a-f]{16,}|\d{4}-\d{2}-\d{2}(?:T[\d:.]+Z?)?|\d{1,2}:\d{2}(?::\d{2})?"
)


def _walk(value: Any, fn) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    return value


def templatize(body: dict, prompt: str) -> dict:
    return _walk(body, lambda s: s.replace(prompt, PLACEHOLDER))


def expand(template: dict, prompt: str) -> dict:
    """The request body `template` makes for `prompt`."""
    return _walk(template, lambda s: s.replace(PLACEHOLDER, prompt) if PLACEHOLDER in s else s)


def _normalized(body: dict) -> str:
    return _VOLATILE.sub("~", json.dumps(body, sort_keys=True, ensure_ascii=False))


def request_kind(body: dict) -> str:
    """`main` (the agent's turn) or `side` (a title or summary request, told by its system text)."""
    texts = [str(body.get("system") or "")[:2000]]
    for item in (body.get("messages") or body.get("input") or [])[:3]:
        texts.append(json.dumps(item.get("content"), ensure_ascii=False)[:2000] if isinstance(item, dict) else "")
    return "side" if any(side_task(t) for t in texts) else "main"


def load_templates(path: Path = TEMPLATES_FILE) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def expand_line(line: dict, templates: dict[str, dict]) -> dict:
    """An eval or training line naming a `template` as one with its `body` filled in."""
    if "template" not in line:
        return line
    return dict(line, body=expand(templates[line["template"]], line["prompt"]))


def label_for(kind: str, intent: str) -> str:
    """A side request is not code work whatever it quotes; the main turn is the user's intent."""
    return "instruct" if kind == "side" else intent


def build(captures: Path, prompts: Path, source: str, templates_path: Path = TEMPLATES_FILE) -> tuple[list[dict], dict]:
    """Lines for every capture under `captures` (CLI/ID-N.json), labelled from `prompts`
    (`{"id", "label", "prompt"}`); new templates are added to `templates_path`."""
    intents = {row["id"]: row for row in map(json.loads, prompts.read_text(encoding="utf-8").splitlines()) if row}
    templates = load_templates(templates_path)
    lines, mismatched = [], []
    for path in sorted(captures.glob("*/*.json")):
        capture = json.loads(path.read_text(encoding="utf-8"))
        body, prompt = capture["body"], capture["prompt"]
        kind = request_kind(body)
        name = f"{capture['cli']}/{capture['variant']}/{kind}"
        template = templatize(body, prompt)
        if PLACEHOLDER not in json.dumps(template, ensure_ascii=False):
            mismatched.append(f"{path.name}: prompt not found in the body")
            continue
        # A CLI may shape some prompts differently (opencode quotes Latin-script prompts, not CJK
        # ones): each shape seen gets its own numbered template.
        sent = _normalized(body)
        family = [n for n in templates if n == name or n.startswith(name + "#")]
        match = next((n for n in family if _normalized(expand(templates[n], prompt)) == sent), None)
        if match is None:
            match = name if not family else f"{name}#{len(family) + 1}"
            templates[match] = template
            if _normalized(expand(template, prompt)) != sent:
                mismatched.append(f"{path.parent.name}/{path.name}: its own template does not give it back")
                continue
        name = match
        intent = intents[capture["prompt_id"]]["label"]
        lines.append({"endpoint": capture["path"], "template": name, "prompt": prompt,
                      "label": label_for(kind, intent), "source": source, "cli": capture["cli"]})
    templates_path.write_text(json.dumps(templates, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    summary = {"lines": len(lines), "by_template": dict(Counter(l["template"] for l in lines)),
               "labels": dict(Counter(l["label"] for l in lines)), "mismatched": mismatched}
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lines, summary = build(args.captures, args.prompts, args.source)
    with open(args.out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

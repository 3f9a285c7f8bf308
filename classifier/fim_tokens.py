"""FIM special tokens of every model family, and a bounded scan for them in raw prompts."""

from __future__ import annotations

# family -> tokens; a prompt holding `need` of them (or more) is a FIM prompt of that family.
# Tokens that could occur in ordinary text (`<PRE>` is also an HTML tag, `[SUFFIX]` a plain
# bracket word) need two distinct tokens; the others are unique enough alone.
FIM_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    "qwen": (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"), 1),
    "codegemma": (("<|file_separator|>",), 1),
    "starcoder": (("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<fim-prefix>", "<fim-suffix>", "<fim-middle>"), 1),
    "deepseek": (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"), 1),
    "seed-coder": (("<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>"), 1),
    "codegeex": (("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"), 1),
    "codellama": (("<PRE>", "<SUF>", "<MID>"), 2),
    "codestral": (("[SUFFIX]", "[PREFIX]"), 2),
}

# Hole markers used by chat-based autocomplete (e.g. Continue's hole filler): FIM through a chat model.
HOLE_MARKERS: tuple[str, ...] = ("{{FILL_HERE}}", "<FILL_HERE>", "{{HOLE}}", "<|fim_hole|>")


def find_fim_family(window: str) -> str | None:
    """The first family whose FIM tokens occur in `window` (an already bounded slice), or None."""
    if "<" not in window and "[" not in window:
        return None
    for family, (tokens, need) in FIM_FAMILIES.items():
        hits = 0
        for token in tokens:
            if token in window:
                hits += 1
                if hits >= need:
                    return family
    return None


def find_hole_marker(window: str) -> str | None:
    for marker in HOLE_MARKERS:
        if marker in window:
            return marker
    return None

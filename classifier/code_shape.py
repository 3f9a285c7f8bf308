"""Is a raw completion prompt code? A line-shape heuristic over a bounded window, no model needed.

A raw prompt that starts as code and does not end in a prose instruction is text to be continued:
raw code completion, i.e. `fim`. A prompt that opens with prose ("Fix the bug in ...") is not.
"""

from __future__ import annotations

import re

_CODE_START = re.compile(
    r"^\s*(?:def|class|import|from\s+[\w.]+\s+import|return|if|elif|else|for|while|try|except|finally|with|"
    r"async|await|const|let|var|function|public|private|protected|static|final|package|using|namespace|"
    r"#include|#define|#pragma|#!|fn|func|impl|struct|enum|interface|type|module|export|require|use|mod|"
    r"SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|val|object|trait|switch|case|do|begin|end|local|sub|my|"
    r"template|typedef|void|int|char|float|double|bool|auto|unsigned|long|std::|println!?|print|console\.)\b"
    r"|^\s*(?:@\w+|<\?php|<!DOCTYPE|<html|<div|<script|\}|\]|\)|#\s|//|/\*|\*|--|\"\"\"|''')"
)
_CODE_END = re.compile(r"(?:[{};:(\[,=\\]|=>|->|\*/|\"\"\"|''')\s*$")
_CODE_INSIDE = re.compile(r"==|!=|:=|->|=>|::|\w\(|\)\s*\{|\w\[|\+=|&&|\|\||;\s*$|^\s{2,}\S|^\t")
_PROSE = re.compile(r"^[^\W\d_][^\W\d_'’-]*(?:[ ,]+[^\W\d_][\w'’-]*){4,}[ ,]*[.?!:]?\s*$")


def code_line(line: str) -> bool:
    """A line that reads as code in most languages."""
    if _CODE_START.search(line) or _CODE_END.search(line):
        return True
    return bool(_CODE_INSIDE.search(line)) and not _PROSE.match(line.strip())


def prose_line(line: str) -> bool:
    """A sentence: five or more words, no code punctuation."""
    stripped = line.strip()
    return bool(_PROSE.match(stripped)) and not _CODE_INSIDE.search(stripped)


def looks_like_code(window: str, max_lines: int = 40) -> bool:
    """True when `window` (a bounded head…tail slice) reads as raw source code, not a request."""
    lines = [line for line in window.splitlines() if line.strip()]
    if not lines:
        return False
    head = lines[:max_lines]
    if not code_line(head[0]) or prose_line(head[0]):
        return False
    last = lines[-1]
    if prose_line(last) and not last.lstrip().startswith(("#", "//", "*", "--")):
        return False
    code = sum(1 for line in head if code_line(line))
    return code >= 0.5 * len(head)


def code_line_count(text: str, max_lines: int = 60) -> int:
    """How many of the first lines read as code: a text-model feature for pasted code."""
    return sum(1 for line in text.splitlines()[:max_lines] if line.strip() and code_line(line))

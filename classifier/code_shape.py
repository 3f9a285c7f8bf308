"""Is a raw completion prompt code? A line-shape heuristic over a bounded window, no model needed.

A raw prompt that starts as code and does not end in a prose instruction is text to be continued:
raw code completion, i.e. `fim`. A prompt that opens with prose ("Fix the bug in ...") is not.
"""

from __future__ import annotations

import re

# Line starts that are code in practice (specific enough not to fire on English sentences).
_CODE_START = re.compile(
    r"^\s*(?:"
    r"import\s+[\w.{*\"']+\s*(?:$|;|,|as\s|from\s)|from\s+[.\w]+\s+import\s|"
    r"(?:def|class|fn|func|function|struct|impl|trait|interface|enum)\s+\w+\s*[(<:{\[]|"
    r"(?:async\s+)?(?:def|function)\s|"
    r"(?:const|let|var|val|auto)\s+[\w{\[]+\s*[=:;]|"
    r"(?:public|private|protected|internal)\s+[\w<]|"
    r"(?:package|namespace|using|module)\s+[\w.]+\s*[;{]?\s*$|"
    r"#\s*(?:include|define|pragma|if|ifdef|ifndef|endif)\b|#!|"
    r"(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|FROM|WHERE|JOIN|LEFT|INNER|GROUP BY|ORDER BY|HAVING|LIMIT|VALUES|WITH)\b|"
    r"@\w+[\w.]*\s*(?:\(|$)|<\?php|<!DOCTYPE|<html|<div|<script|<template|"
    r"pub(?:\(crate\))?\s+(?:fn|struct|trait|mod|use|enum|const|static|type)\s|"
    r"[}\])]|//|/\*|\*\s|\*/|--\s|\"\"\"|'''|'use [a-z]+'|\"use [a-z]+\""
    r")"
)
_COMMENT = re.compile(r"^\s*(?://|/\*|\*\s|\*/|#|--|\"\"\"|''')")
_CODE_END = re.compile(r"(?:[{};(\[,=\\]|=>|->|\*/|\"\"\"|''')\s*$|\)\s*:\s*$|^\s*\w+\s*:\s*$")
_CODE_INSIDE = re.compile(r"==|!=|:=|->|=>|::|\w\([^()\n]{0,80}\)|\w\[|\+=|&&|\|\||;\s*$|\s=\s")
_STRONG_END = re.compile(r"[{};]\s*$")
_WORD = re.compile(r"^[(\"'“]?[^\W\d_][^\W\d_'’-]*[)\"'”]?[.,:;?!]?$")


def prose_line(line: str) -> bool:
    """A sentence: five or more tokens nearly all plain words, or a line opening with three words."""
    tokens = line.split()
    if len(tokens) < 4 or _STRONG_END.search(line):
        return False
    if _WORD.match(tokens[0]) and sum(1 for token in tokens[:4] if _WORD.match(token)) >= 3:
        return True
    return len(tokens) >= 5 and sum(1 for token in tokens if _WORD.match(token)) >= 0.8 * len(tokens)


def code_line(line: str) -> bool:
    """A line that reads as code in most languages (and not as a sentence)."""
    if _CODE_START.match(line):
        return True
    if prose_line(line):
        return False
    return bool(_CODE_END.search(line) or _CODE_INSIDE.search(line))


def looks_like_code(window: str, max_lines: int = 40) -> bool:
    """True when `window` (a bounded head…tail slice) reads as raw source code, not a request."""
    lines = [line for line in window.splitlines() if line.strip()]
    if not lines:
        return False
    head = lines[:max_lines]
    if not (code_line(head[0]) or _COMMENT.match(head[0])):
        return False
    last = lines[-1]
    if prose_line(last) and not last[:1].isspace() and not _COMMENT.match(last):
        return False  # an instruction after the code: a request about code, not code to continue
    code = sum(1 for line in head if line[:1].isspace() or _COMMENT.match(line) or code_line(line))
    return code >= 0.5 * len(head)


def code_line_count(text: str, max_lines: int = 60) -> int:
    """How many of the first lines read as code: a text-model feature for pasted code."""
    return sum(1 for line in text.splitlines()[:max_lines] if line.strip() and code_line(line))

"""The text model's features: word uni/bigrams and char 4-grams of the current turn, a few
code-shape markers, and context words (system prompt, previous exchange) kept apart by a prefix.

`analyze` is the TfidfVectorizer's analyzer; it is persisted by name in the skops artifact, so it
must stay a module-level function (and stay in model.TRUSTED_TYPES).
"""

from __future__ import annotations

import re

from classifier.code_shape import code_line_count

CONTEXT_SEPARATOR = "\x1e"
CHAR_GRAM_CHARS = 192  # char n-grams over the head of the turn only: typos, other languages, symbols
BIGRAM_WORDS = 96  # word pairs from the head of the turn only: bounded cost per request
_TOKEN = re.compile(r"\w+|[^\w\s]{1,3}")


def compose_document(current: str, context: str) -> str:
    """One string per request: the current turn, then its context after a separator."""
    return current + CONTEXT_SEPARATOR + context


def _bucket(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n < 4 else "4-9" if n < 10 else "10+"


def analyze(document: str) -> list[str]:
    """Feature strings of one composed document (see compose_document)."""
    current, _, context = document.partition(CONTEXT_SEPARATOR)
    lowered = current.lower()
    words = _TOKEN.findall(lowered)
    features = ["w:" + w for w in words]
    head_words = words[:BIGRAM_WORDS]
    features += ["b:" + a + " " + b for a, b in zip(head_words, head_words[1:])]
    head = " ".join(lowered[:CHAR_GRAM_CHARS].split())  # no whitespace inside a feature: see model._TERM_SEPARATOR
    features += ["c:" + head[i : i + 4] for i in range(len(head) - 3)]
    features.append("s:codelines=" + _bucket(code_line_count(current, max_lines=30)))
    features.append("s:words=" + _bucket(len(words) // 8))
    if "```" in current:
        features.append("s:fence")
    if context:
        features += ["x:" + w for w in _TOKEN.findall(context.lower())]
    else:
        features.append("x:none")
    return features

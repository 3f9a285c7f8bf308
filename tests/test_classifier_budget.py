"""Bounded cost: whatever the request's size, the classifier reads at most TEXT_BUDGET characters.

Asserts on the characters read (counted by classifier.text.TextReader), not on time.
"""

from __future__ import annotations

import pytest

from classifier import Classifier
from classifier.text import TEXT_BUDGET
from request_parsing import classify, view_of

MB = 1_000_000
CODE = "def f(x):\n    return x * 2\n"
PROSE = "The committee met again to discuss the budget for next year. "


def big(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def requests_of_size(size: int) -> list[tuple[str, dict]]:
    text, code = big(PROSE, size), big(CODE, size)
    conversation = [
        {"role": "system", "content": big("Be brief. ", size)},
        {"role": "user", "content": text},
        {"role": "assistant", "content": big("Sure. ", size)},
        {"role": "user", "content": text},
    ]
    return [
        ("/v1/chat/completions", {"messages": conversation}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": text}] * 40}]}),
        ("/v1/completions", {"prompt": code, "suffix": code}),
        ("/v1/completions", {"prompt": [text]}),
        ("/completion", {"prompt": text}),
        ("/api/generate", {"prompt": code, "system": text}),
        ("/infill", {"input_prefix": code, "input_suffix": code, "prompt": code, "input_extra": [{"text": code}] * 40}),
    ]


@pytest.mark.parametrize("index", range(7))
def test_one_megabyte_request_reads_at_most_the_budget(index):
    endpoint, body = requests_of_size(MB)[index]
    view = view_of(endpoint, body)
    assert view.chars_read <= TEXT_BUDGET
    if endpoint != "/infill":  # /infill is FIM by its shape: no text needs reading at all
        assert view.chars_read > 0
    assert TEXT_BUDGET < 20_000  # the budget itself is small: a few KB, not a fraction of the prompt


@pytest.mark.parametrize("index", range(7))
def test_cost_does_not_grow_with_size(index):
    """10 KB, 1 MB and 5 MB versions of a request read exactly as many characters."""
    reads = [view_of(*requests_of_size(size)[index]).chars_read for size in (10_000, MB, 5 * MB)]
    assert reads[0] == reads[1] == reads[2]


def test_many_messages_are_not_all_read():
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 100} for i in range(100_001)]
    view = view_of("/v1/chat/completions", {"messages": messages})
    assert view.many_messages and view.chars_read <= TEXT_BUDGET


def test_classify_decides_a_one_megabyte_prompt():
    clf = Classifier.load()
    for endpoint, body in requests_of_size(MB):
        assert classify(clf, endpoint, body).label.value in {"code_edit", "fim", "chat", "instruct"}

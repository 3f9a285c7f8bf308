"""models/fim_end.py: where a FIM answer ends, on literal cases, streamed in every chunking.

Each case is (prefix, suffix, what the model wrote, the middle expected, the rule expected). The
watcher is fed the answer whole, in 1-, 2- and 5-character pieces: what it sends must always be
the same middle (text once sent is never taken back), and it must stop at the same place.
"""

from __future__ import annotations

import pytest

from models.fim_end import FimEnd, hole_for, hole_of
from models.request import Request

PY = "def f(x):\n    if x:\n"
RET = "    return False\n"

CASES = {
    # suffix: a repeat of the line below the hole ends the middle (blank lines before it go too)
    "repeat of the next line": (PY, RET, "        return True\n    return False\n", "        return True\n", "suffix"),
    "repeat after blank lines": (PY, RET, "        return True\n\n\n    return False\n", "        return True\n", "suffix"),
    "repeat at the very start": (PY, RET, "    return False\n", "", "suffix"),
    "repeat, last line unterminated": (PY, RET, "        return True\n    return False", "        return True\n",
                                       "suffix"),
    "long line repeated at another indentation": (
        "def g():\n", "    total = compute(a, b)\n", "    x = 1\n  total = compute(a, b)\n", "    x = 1\n", "suffix"),
    # fence and prose: the model leaves the code
    "closing fence": (PY, RET, "        return True\n```\n\nIn this solution, x is checked.\n", "        return True\n",
                      "fence"),
    "prose after a blank line": ("x = 1\n", "", "y = 2\n\nThis code sets y to two for later use.\n", "y = 2\n",
                                 "prose"),
    # indent: a column-0 line while the hole is inside an indented block
    "test code after the function": (PY, RET, "        return True\n\n# Test cases\nprint(f(1))\n",
                                     "        return True\n", "indent"),
    "test code at the end of the file": ("def f(x):\n", "", "    return x\n\nprint(f(1))\n", "    return x\n", "indent"),
    # line: code on both sides of the cursor
    "mid-line: ends at the newline": ("x = foo(", ")\nprint(x)\n", "a, b\nprint(x)\n", "a, b", "line"),
    "mid-line: copy of the line's rest cut": ("x = foo(", ")\nprint(x)\n", "a, b)\nprint(x)", "a, b", "line"),
    "mid-line: a closing bracket of its own stays": ("x = foo(", ")\n", "bar()\n", "bar()", "line"),
    "mid-line: rest of the line copied at the end": ("total = ", " + 1\n", "a * b + 1", "a * b", "line"),
}

KEPT = {
    # must NOT be cut
    "nothing past the hole": (PY, RET, "        return True\n", "        return True\n"),
    "closing brace of its own block": ("function f() {\n", "}\n", "  if (a) {\n    b();\n  }\n", "  if (a) {\n    b();\n  }\n"),
    "a lone closing bracket equal to the suffix's": ("function f() {\n", "}\n", "  b();\n}\n", "  b();\n}\n"),
    "short keyword line at another indentation": ("def f(x):\n", "    return\n", "    if x:\n        return\n",
                                                 "    if x:\n        return\n"),
    "dedent that reopens a block": ("def f(v):\n    if v:\n        if a:\n", "        res = 0\n    return res\n",
                                    "            res = 1\n        else:\n            res = 2\n    else:\n",
                                    "            res = 1\n        else:\n            res = 2\n    else:\n"),
    "blank lines inside the middle": (PY, RET, "        y = 1\n\n        return y\n", "        y = 1\n\n        return y\n"),
    "fences in a Markdown document": ("# Title\n\n```python\n", "```\n", "print(1)\n```\n", "print(1)\n```\n"),
    "prose in a document that has prose": ("Some notes.\n\nThe first point is here.\n", "",
                                           "\nThe second point is this one.\n", "\nThe second point is this one.\n"),
    "top level code below: column 0 is fine": ("x = 1\n", "print(x)\n", "y = 2\nz = 3\n", "y = 2\nz = 3\n"),
    "cursor at column 0 before code: whole lines": ("def f():\n", "    return 1\n", "    x = 0\n", "    x = 0\n"),
    "prose-like line without a blank line before it": ("x = 1\n", "", "y = 2\nThis is not cut here\n",
                                                       "y = 2\nThis is not cut here\n"),
}


def run(prefix: str, suffix: str, answer: str, step: int) -> tuple[str, list[str], FimEnd]:
    end = FimEnd(hole_of(prefix, suffix))
    sent = []
    for i in range(0, len(answer), step):
        sent.append(end.feed(answer[i:i + step]))
        if end.cut is not None:
            break
    if end.cut is None:
        sent.append(end.finish())
    return "".join(sent), sent, end


@pytest.mark.parametrize("step", [1, 2, 5, 10_000])
@pytest.mark.parametrize("name", list(CASES))
def test_rules_cut_where_the_middle_ends(name, step):
    prefix, suffix, answer, middle, rule = CASES[name]
    got, _, end = run(prefix, suffix, answer, step)
    assert got == middle
    assert end.cut is not None and end.cut.rule == rule


@pytest.mark.parametrize("step", [1, 3, 10_000])
@pytest.mark.parametrize("name", list(KEPT))
def test_legitimate_middles_are_kept(name, step):
    prefix, suffix, answer, middle = KEPT[name]
    got, _, end = run(prefix, suffix, answer, step)
    assert (got, end.cut) == (middle, None)


def test_generation_stops_at_the_first_character_that_leaves_the_block():
    got, sent, end = run(PY, RET, "        return True\n\n#" + "x" * 50, 1)
    assert got == "        return True\n" and end.cut.rule == "indent"
    assert len(sent) == len("        return True\n\n#")  # nothing fed after the '#'


def test_streaming_sends_a_line_once_it_cannot_stop_the_middle():
    """Hold back only what could still be cut: a line that diverges from every rule goes out at once."""
    end = FimEnd(hole_of(PY, RET))
    assert end.feed("        ") == ""  # indentation: could still be anything
    assert end.feed("y") == "        y"  # not the suffix's line, not a fence: sent before its end
    assert end.feed(" = 1") == " = 1"
    assert end.feed("\n    ret") == "\n"  # could be `    return False`: held
    assert end.feed("urn x") == "    return x"  # diverged: sent
    assert end.feed("\n\n") == "\n"  # blank lines are held (a repeat of the suffix may follow)
    assert end.feed("    return False\n") == "" and end.cut.rule == "suffix"


def test_weak_line_then_a_strong_repeat_is_cut_and_a_weak_line_alone_is_not():
    prefix, suffix = "function f() {\n  if (a) {\n", "  }\n  return 1;\n}\n"
    assert run(prefix, suffix, "    b();\n  }\n  return 1;\n", 1)[0] == "    b();\n"
    assert run(prefix, suffix, "    b();\n  }\n", 1)[0] == "    b();\n  }\n"


def test_midline_holds_back_only_what_could_start_the_lines_rest():
    end = FimEnd(hole_of("v = max(", ", 0)\n"))
    assert end.feed("a") == "a"
    assert end.feed(",") == ""  # could begin ", 0)"
    assert end.feed(" b") == ", b"
    assert end.finish() == "" and end.cut is None


# ---- which requests have a hole ------------------------------------------------------------------


def test_the_hole_of_fim_requests_and_of_raw_templated_prompts():
    fim = Request("fim", "/infill", prefix="def f(x):\n    if x", suffix=":\n        pass\n", prompt="")
    assert hole_for(fim).head == "    if x" and hole_for(fim).tail == ":"
    raw = Request("complete", "/v1/completions", prompt=f"<fim_prefix>{PY}<fim_suffix>{RET}<fim_middle>")
    assert hole_for(raw).anchor == ("    return False",)
    assert hole_for(Request("complete", "/v1/completions", prompt="def f():")) is None
    assert hole_for(Request("chat")) is None

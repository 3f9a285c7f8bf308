"""Where a fill-in-the-middle answer ends: the router knows the suffix, so it stops the model there.

A small coder keeps writing after the middle: it writes the suffix again, closes the answer with
a Markdown fence, or explains itself. Editors clean this up client-side, each its own way; the
router does it once, for every dialect and both backends, while the answer streams (`FimEnd`),
and stops the generation as soon as the middle is over (`watch`), so no compute goes into text
nobody will see. Streaming clients only ever receive text no rule can still cut: the watcher
holds back just the line that could still turn into a stop, the blank lines before it, and the
lines of a repeat of the suffix that is not yet sure.

The rules, and the client code each follows (read, not copied):

- **suffix**: a line that repeats the suffix's first non-blank line ends the middle there (and
  blank lines right before it go with it). Continue: `stopAtLinesExact` / `stopAtSimilarLine`
  against the line below the cursor, `stopAtStartOfSuffix` (core/autocomplete/filtering/
  streamTransforms); llama.vim `s:fim_render` and llama.vscode `shouldDiscardSuggestion`
  (discard a suggestion that repeats the next non-empty lines). A line of brackets only (`}`,
  `);`) may end a middle legitimately (it closes the middle's own block): Continue lets such
  trimmed-equal lines through; here a "weak" line counts only when the next suffix line is
  repeated too. Lines are compared with their indentation; a long one (10+ characters) also
  without it.
- **indent**: with the hole inside an indented block (the middle's first line and the line below
  the hole, if any, are indented), a line at column 0 leaves it: the model has finished the block
  and goes on with test code, `if __name__ == ...` or the next function. llama-server's `n_indent`
  (llama.vim sends the cursor line's indentation; a new line indented less ends the answer) and
  Continue's `getStopTokens` (`\n` + the language's top-level keywords: `\ndef`, `\nclass`,
  `\nfunction`...). Dedenting to any indented level stays allowed, since a middle may close blocks
  and open new ones (`else:`); a multi-line string whose text sits at column 0 is the known cost.
- **fence**: a line opening or closing a Markdown code fence ends the middle (Continue
  `filterCodeBlockLines` / `shouldChangeLineAndStop`: a bare ``` line stops the completion), unless
  the document around the hole has fences itself (editing Markdown).
- **prose**: after a blank line, a line at column 0 that reads as an English sentence ("In this
  solution, ...", "This function ...", "Explanation:") ends it (Continue `filterEnglishLinesAtEnd`,
  `ENGLISH_POST_PHRASES`), unless the text around the hole has such lines itself.
- **line**: with code on both sides of the cursor on its line, the middle ends on that line: at
  the first newline, and a copy of the rest of the line at its end is cut (llama.vscode
  `updateSuggestion`; Continue `shouldCompleteMultiline`: no multi-line completion mid-line;
  llama.vim discards a suggestion equal to the line's rest). Unlike Continue's check (any suffix
  not starting with a newline), only the cursor with code before it counts: at column 0 or in the
  indentation, the middle usually is whole lines ending with a newline, which this rule would cut.
  A copy of the rest of the line is cut only if that does not unbalance the line's brackets, so
  `foo(|)` completed as `bar())` loses one `)`, and as `bar()` none.

llama-server ends its own `n_indent` stop the same way (it cuts the line that broke the rule and
reports the stop), but reports it as `limit`; here a cut is a stop (`Finish.reason` "stop", with
the rule and the text it stopped at in `Finish.fim_cut`; llama.cpp's /infill says `stop_type`
"word" with that text as `stopping_word`, OpenAI `finish_reason` and Ollama `done_reason` "stop"),
because the answer ended where the hole does, not at a token limit. A client turns it off per
request with `fim_trim: false` (every FIM dialect's body), the server with the `fim_trim` setting.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from models.events import Event, Finish, FimCut, TextDelta
from models.fim import parse_fim_prompt
from models.request import Request

ANCHOR_LINES = 3  # how many of the suffix's first non-blank lines a repeat is compared with
LONG_LINE = 10  # a line this long (stripped) matches without its indentation
CONTEXT_LINES = 30  # lines of prefix and suffix looked at for fences and prose of the document's own
FENCE = "```"
# Sentences that begin an explanation after the code (Continue's post phrases, and what
# Qwen2.5-Coder-0.5B writes after a middle).
PROSE_OPENERS = (
    "explanation", "here is", "here's", "the above", "in this", "this code", "this function", "this solution",
    "this implementation", "note:", "note that", "the function", "the code", "this will", "this is", "example usage",
)
_SENTENCE = re.compile(r"[A-Z][a-z']*(?:,? [A-Za-z][a-z']*){3,}")
_CODE_CHARS = re.compile(r"[=(){}\[\];<>]|\w\.\w|^\w+:$")
_BRACKETS = {")": "(", "]": "[", "}": "{"}


def _strong(line: str) -> bool:
    """A line that a middle does not legitimately end with when the suffix starts with it."""
    return any(c.isalnum() for c in line)


def _same_line(got: str, want: str) -> bool | None:
    """None: different; False: the same weak line (brackets only); True: the same line."""
    if got.rstrip() == want.rstrip():
        return _strong(want)
    s = want.strip()
    if len(s) >= LONG_LINE and got.strip() == s:
        return True
    return None


def _is_prose(line: str) -> bool:
    """An English sentence at column 0, not code."""
    if not line or line[0].isspace():
        return False
    low = line.lower()
    if any(low.startswith(p) for p in PROSE_OPENERS):
        return True
    return bool(_SENTENCE.match(line)) and not _CODE_CHARS.search(line[:60])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _balance(text: str) -> int:
    """How unbalanced `text`'s brackets are: closers without an opener plus openers left open."""
    depth = {o: 0 for o in _BRACKETS.values()}
    unmatched = 0
    for c in text:
        if c in depth:
            depth[c] += 1
        elif c in _BRACKETS:
            o = _BRACKETS[c]
            if depth[o]:
                depth[o] -= 1
            else:
                unmatched += 1
    return unmatched + sum(depth.values())


@dataclass(frozen=True)
class Hole:
    """What the router knows about the hole: the cursor's line around it and the lines below."""

    head: str  # the cursor's line before the cursor
    tail: str  # the cursor's line after the cursor
    anchor: tuple[str, ...]  # the suffix's first non-blank lines (those a repeat would start with)
    fenced: bool  # the document has Markdown fences of its own
    prose: bool  # the document has prose lines of its own

    @property
    def indent(self) -> int:
        """The indentation of the line the middle flows into (none below the hole: no limit from it)."""
        return _indent(self.anchor[0]) if self.anchor else 1 << 30

    @property
    def midline(self) -> bool:
        return bool(self.head.strip() and self.tail.strip())


def hole_of(prefix: str, suffix: str) -> Hole:
    head = prefix.rpartition("\n")[2]
    first, nl, rest = suffix.partition("\n")
    # With code after the cursor its line's rest is not a line below; at column 0 it is one.
    below = rest if head.strip() and first.strip() else suffix
    anchor = tuple(line for line in below.split("\n") if line.strip())[:ANCHOR_LINES]
    around = prefix.split("\n")[-CONTEXT_LINES:] + suffix.split("\n")[:CONTEXT_LINES]
    fenced = any(line.lstrip().startswith(FENCE) for line in around)
    prose = any(_is_prose(line) for line in around)
    return Hole(head, first, anchor, fenced, prose)


class FimEnd:
    """Watches one FIM answer's text as it streams and decides where the middle ends.

    `feed(text)` returns the text that may be sent now; once `cut` is set the middle is over and
    everything after it is dropped. `finish()` returns what is still held at the end of
    generation, after judging the last line as a whole.
    """

    def __init__(self, hole: Hole) -> None:
        self.hole = hole
        self.cut: FimCut | None = None
        self._first = True  # the current line is the cursor's own (it starts with hole.head)
        self._line = ""  # the current line's text generated so far
        self._sent = 0  # how much of it was sent (lines no rule can cut any more are sent as they come)
        self._held: list[str] = []  # complete lines held back, each with its newline
        self._match_from: int | None = None  # in _held, where a repeat of the suffix (not yet sure) starts
        self._matched = 0  # anchor lines that repeat has matched
        self._weak = 0  # of which weak ones
        self._floor: int | None = None  # lines indented less than this leave the hole's block (0: no limit)

    def feed(self, text: str) -> str:
        out: list[str] = []
        while text and self.cut is None:
            piece, newline, text = text.partition("\n")
            self._line += piece
            if self._floor is None and self._line.strip():  # the middle's first line sets the block's floor
                self._floor = 1 if min(self.hole.indent, _indent(self._full(self._line))) > 0 else 0
            if self.hole.midline:
                out.append(self._end_midline("\n") if newline else self._send_midline())
            elif newline:
                out.append(self._end_line("\n"))
            elif self._sent:
                out.append(self._send_rest())
            elif self._leaves_block(self._full(self._line)):  # known at its first character: stop now
                out.append(self._stop("indent", self._full(self._line), len(self._held) - self._blanks()))
            elif not self._could_stop(self._full(self._line)):
                out.append(self._release() + self._send_rest())
        return "".join(out)

    def finish(self) -> str:
        """The end of generation: the last line is judged as a whole; what is still held is sent."""
        if self.cut is not None:
            return ""
        if self.hole.midline:
            return self._end_midline(None)
        if not self._line:
            return self._release()
        return self._end_line("")

    def _send_rest(self) -> str:
        out = self._line[self._sent:]
        self._sent = len(self._line)
        return out

    # ---- the line rule (code on both sides of the cursor) ---------------------------------------

    def _tails(self) -> list[str]:
        tail = self.hole.tail
        return [t for t in dict.fromkeys((tail.rstrip(), tail.strip())) if t]

    def _send_midline(self) -> str:
        """Send the line but for its end, which could be the start of a copy of the line's rest."""
        line, keep = self._line, 0
        for tail in self._tails():
            keep = max([keep] + [n for n in range(1, min(len(tail), len(line)) + 1) if tail.startswith(line[-n:])])
        upto = len(line) - keep
        out = line[self._sent:upto] if upto > self._sent else ""
        self._sent = max(self._sent, upto)
        return out

    def _end_midline(self, at: str | None) -> str:
        """The line ends (at a newline, or the answer does): cut a copy of the line's rest at its end."""
        line = keep = self._line
        for tail in self._tails():
            if line.endswith(tail) and self._keeps_balance(line[: -len(tail)], line):
                keep, self.cut = line[: -len(tail)], FimCut("line", tail)
                break
        if self.cut is None and at is not None:
            self.cut = FimCut("line", at)
        return keep[self._sent:]

    def _keeps_balance(self, cut: str, whole: str) -> bool:
        h, t = self.hole.head, self.hole.tail
        return _balance(h + cut + t) <= _balance(h + whole + t)

    # ---- the block rules (suffix, fence, prose) ---------------------------------------------------

    def _full(self, line: str) -> str:
        return self.hole.head + line if self._first else line

    def _after_blank(self) -> bool:
        return bool(self._held) and not self._held[-1].strip()

    def _could_stop(self, line: str) -> bool:
        """Could this incomplete line still turn into one that ends the middle?"""
        s = line.lstrip()
        if not s:
            return True
        if self._dedented(line):
            return True
        if not self.hole.fenced and (FENCE.startswith(s) or s.startswith(FENCE)):
            return True
        if not self.hole.prose and self._after_blank() and line == s and s[0].isupper():
            return True
        anchor = self.hole.anchor
        wants = anchor[:1]
        if self._match_from is not None and self._matched < len(anchor):
            wants += (anchor[self._matched],)
        return any(w.rstrip().startswith(line) or (len(w.strip()) >= LONG_LINE and w.strip().startswith(s))
                   for w in wants)

    def _end_line(self, newline: str) -> str:
        """The current line is complete (`newline` is "" for the answer's last line)."""
        line, sent, text = self._full(self._line), self._sent, self._line + newline
        self._first, self._line, self._sent = False, "", 0
        if sent:
            return text[sent:]
        stripped = line.strip()
        if not stripped:
            self._held.append(text)
            return ""
        if not self.hole.fenced and stripped.startswith(FENCE):
            return self._stop("fence", line, len(self._held) - self._blanks())
        if self._dedented(line):
            return self._stop("indent", line, len(self._held) - self._blanks())
        if not self.hole.prose and self._after_blank() and _is_prose(line):
            return self._stop("prose", line, len(self._held) - self._blanks())
        anchor = self.hole.anchor
        if self._match_from is not None and self._matched < len(anchor):
            same = _same_line(line, anchor[self._matched])
            if same is not None:
                return self._repeat(same, text)
        same = _same_line(line, anchor[0]) if anchor else None
        if same is None:
            return self._release() + text
        # A repeat may start here: what comes before its blank lines can go.
        n = len(self._held) - self._blanks()
        out, self._held = "".join(self._held[:n]), self._held[n:]
        self._match_from, self._matched, self._weak = 0, 0, 0
        return out + self._repeat(same, text)

    def _leaves_block(self, line: str) -> bool:
        s = line.lstrip()
        return bool(s) and self._dedented(line) and not (FENCE.startswith(s) or s.startswith(FENCE))

    def _dedented(self, line: str) -> bool:
        """A line at column 0 while the middle started indented and the code below it is indented (or absent)."""
        return self._floor is not None and _indent(line) < self._floor

    def _blanks(self) -> int:
        n = 0
        while n < len(self._held) and not self._held[-1 - n].strip():
            n += 1
        return n

    def _repeat(self, strong: bool, text: str) -> str:
        self._matched += 1
        self._weak += not strong
        self._held.append(text)
        if strong or self._weak >= 2:
            return self._stop("suffix", self.hole.anchor[0], self._match_from or 0)
        return ""

    def _stop(self, rule: str, at: str, end: int) -> str:
        """The middle ends before held line `end` (blank lines right before a repeat go with it)."""
        kept = self._held[:end]
        self.cut = FimCut(rule, at)
        self._held = []
        return "".join(kept)

    def _release(self) -> str:
        out = "".join(self._held)
        self._held, self._match_from = [], None
        return out


def hole_for(request: Request) -> Hole | None:
    """The hole of a FIM request, or of a raw completion templated with FIM tokens; None: not FIM."""
    if request.kind == "fim":
        return hole_of(request.prefix + request.prompt, request.suffix)
    if request.kind == "complete":
        parsed = parse_fim_prompt(request.prompt)
        if parsed is not None:
            return hole_of(parsed.prefix, parsed.suffix)
    return None


class _StopOrCancel(threading.Event):
    """Set when the watcher stops the answer, or when the caller cancels it (what the backend checks)."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel

    def is_set(self) -> bool:
        return self._cancel.is_set() or super().is_set()


def watch(request: Request, generate: Callable[[Request, threading.Event], Iterator[Event]],
          cancel: threading.Event) -> Iterator[Event]:
    """`generate(request, cancel)`, ended where the middle ends (unless the request turns it off)."""
    hole = hole_for(request) if request.params.fim_trim is not False and request.generates else None
    if hole is None:
        return generate(request, cancel)
    return _watched(FimEnd(hole), generate, request, cancel)


def _watched(end: FimEnd, generate: Callable[[Request, threading.Event], Iterator[Event]], request: Request,
             cancel: threading.Event) -> Iterator[Event]:
    stop = _StopOrCancel(cancel)
    for ev in generate(request, stop):
        if isinstance(ev, TextDelta):
            text = end.feed(ev.text)
            if text:
                yield TextDelta(text)
            if end.cut is not None:
                stop.set()
        elif isinstance(ev, Finish):
            if end.cut is None and ev.reason != "cancelled":
                rest = end.finish()
                if rest:
                    yield TextDelta(rest)
            if end.cut is not None and not cancel.is_set() and ev.reason in ("stop", "length", "cancelled"):
                ev = replace(ev, reason="stop", fim_cut=end.cut, stop_sequence=None)
            yield ev
            return
        else:
            yield ev

"""Budgeted text reading: the classifier looks at fixed-size slices of a request, never all of it.

Every slice goes through a `TextReader`, which counts the characters it handed out; that count is
what makes "the cost does not grow with prompt size" testable (see tests/test_classifier_budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# What the text model sees of the current turn: its head and its tail.
CURRENT_HEAD = 1024
CURRENT_TAIL = 256
# What it sees of each piece of context (system prompt, previous user turn, previous answer).
CONTEXT_CHARS = 256
# What the shape rules scan for FIM tokens and code: both ends of a raw prompt.
SCAN_HEAD = 2048
SCAN_TAIL = 2048
# Messages and content parts looked at, counted from the end of the conversation.
MAX_MESSAGES = 64
MAX_PARTS = 16
# Agent wrappers (classifier/agent_wrappers.py): both ends of each part peeked at to tell an
# injected block, the first messages checked for an invented set-up exchange, and the heads of
# the system prompt and the lead-in turn searched for a side task (a title request).
WRAPPER_PEEK = 64
SETUP_WINDOW = 4
SIDE_TASK_PEEK = 512
# The most one request can cost, whatever its size: a scan of both ends of the prompt (and the
# suffix), the current turn, three context pieces, and the agent-wrapper peeks.
TEXT_BUDGET = (
    2 * (SCAN_HEAD + SCAN_TAIL) + CURRENT_HEAD + CURRENT_TAIL + 3 * CONTEXT_CHARS
    + 2 * WRAPPER_PEEK * (MAX_PARTS + SETUP_WINDOW) + 2 * SIDE_TASK_PEEK
)

ELLIPSIS = "\n…\n"


@dataclass(slots=True)
class TextReader:
    """Hands out bounded slices of request strings and counts the characters read."""

    chars_read: int = 0

    def head(self, text: str, n: int) -> str:
        piece = text[:n]
        self.chars_read += len(piece)
        return piece

    def tail(self, text: str, n: int) -> str:
        piece = text[-n:] if n else ""
        self.chars_read += len(piece)
        return piece

    def ends(self, text: str, head: int, tail: int) -> str:
        """The whole text if it fits in head+tail, else its head and tail joined by an ellipsis."""
        if len(text) <= head + tail:
            self.chars_read += len(text)
            return text
        return self.head(text, head) + ELLIPSIS + self.tail(text, tail)

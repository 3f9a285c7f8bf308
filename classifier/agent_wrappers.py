"""What coding agents wrap around the user's words, so the classifier reads the user's intent.

Agents add text the user never typed: Claude Code's `<system-reminder>` blocks, Codex's
`<environment_context>` turn, qwen-code's "We are setting up the context for our chat." turn
(answered by an invented "Got it. Thanks for the context!"), opencode's quotes around the prompt.
They also send side requests (a conversation title) whose task is set by the system prompt, not
by the quoted user text. Everything here looks at bounded slices only (heads and tails).
"""

from __future__ import annotations

import re

# Tags agents put around context they inject into user turns (whole blocks are dropped).
_WRAPPER_TAGS = (
    "system-reminder",
    "environment_context",
    "user_instructions",
    "permissions instructions",
    "skills_instructions",
    "user-prompt-submit-hook",
    "local-command-stdout",
    "command-name",
    "command-message",
    "command-args",
    "context",
)
_TAG_ALTERNATION = "|".join(re.escape(t) for t in _WRAPPER_TAGS)
_OPEN = re.compile(rf"^\s*<({_TAG_ALTERNATION})(?:\s[^>]*)?>", re.IGNORECASE)
_BLOCK = re.compile(rf"<({_TAG_ALTERNATION})(?:\s[^>]*)?>.*?</\1>\s*", re.IGNORECASE | re.DOTALL)
# A block opened in the slice whose end the slice does not hold (cut by the reader's ellipsis).
_UNCLOSED = re.compile(rf"<({_TAG_ALTERNATION})(?:\s[^>]*)?>(?:(?!</\1>).)*$", re.IGNORECASE | re.DOTALL)
# A user turn that only sets up context (qwen-code, Gemini CLI), never the user's question.
_SETUP_TURN = re.compile(
    r"^\s*(?:this is the [\w .-]{1,40}\.\s*)?we are setting up the context|"
    r"^\s*<(?:environment_context|system-reminder|user_instructions)\b",
    re.IGNORECASE,
)
# Side requests: the system prompt (or the turn before the quoted text) sets a task of its own.
_SIDE_TASK = re.compile(
    r"you are a title generator|generate a (?:brief |short |concise )?title for|"
    r"(?:create|write|provide) a (?:short |brief |concise |detailed )?summary of (?:the|this) conversation|"
    r"extract a \d(?:-\d)? word title",
    re.IGNORECASE,
)
SETUP_ACK_CHARS = 200  # an invented acknowledgement is one short sentence


def is_wrapper_block(head: str, tail: str) -> bool:
    """A text part that is one injected block from start to end (judged from its two ends)."""
    match = _OPEN.match(head)
    return bool(match) and tail.rstrip().lower().endswith(f"</{match.group(1).lower()}>")


def strip_wrappers(text: str) -> str:
    """`text` (an already bounded slice) without injected blocks, and without the literal quotes
    opencode puts around a prompt."""
    if "<" in text:
        text = _BLOCK.sub("", text)
        text = _UNCLOSED.sub("", text)
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"' and '"' not in stripped[1:-1]:
        return stripped[1:-1]
    return stripped


def is_setup_turn(head: str) -> bool:
    """A user turn that only hands the agent its environment (its first characters tell)."""
    return bool(_SETUP_TURN.match(head))


def side_task(head: str) -> str | None:
    """The side task a system prompt or a lead-in turn sets (a title, a summary), or None."""
    match = _SIDE_TASK.search(head)
    return match.group(0).lower() if match else None

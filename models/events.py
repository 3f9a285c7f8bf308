"""The one generation event stream every backend produces and every dialect renders.

Text deltas flow until the model starts a tool call; a call is a ToolCallStart (index, id, name)
followed by argument pieces; an embedding request gets one Embeddings instead. The stream always
ends with exactly one Finish, which carries the usage (every dialect writes the reason and the
counts together, at the end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text (already detokenized, UTF-8 complete)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call begins: its id and name appear once, here."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the call's arguments, as JSON text; the pieces of one index concatenate."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class Embeddings:
    """An embedding request's answer: one pooled vector per input, in input order (before any normalising)."""

    vectors: list[list[float]]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a generation cost: tokens and milliseconds."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    load_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FimCut:
    """Where the router ended a FIM answer because the middle was over (models/fim_end.py)."""

    rule: Literal["suffix", "indent", "fence", "prose", "line"]
    at: str  # the text it stopped at, left out of the answer (the repeated suffix line, the fence, ...)


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of every generation: why it ended and what it cost."""

    reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    truncated: bool = False  # the prompt was trimmed to fit (FIM)
    error: str | None = None  # set with reason == "error" (mid-stream failure)
    stop_sequence: str | None = None  # the client's stop string that ended it, where known (Anthropic reports it)
    fim_cut: FimCut | None = None  # set when the router stopped a FIM answer where the middle ends (a "stop")


Event = TextDelta | ToolCallStart | ToolCallDelta | Embeddings | Finish

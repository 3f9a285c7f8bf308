"""The one internal request: what every dialect adapter parses a body into, once.

The classifier, routing, the pool and both backends read only this form. Messages hold typed
parts (text, images, tool calls with arguments as objects, tool results), beside the tools, the
tool choice, the output format, sampling, the FIM parts and the client's model name. Pure data:
it imports nothing heavy, so the classifier can read it without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["chat", "complete", "fim", "embed"]
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image as the client gave it: a URL, a data: URL or base64 (kept even where no model reads it)."""

    url: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: arguments as an object (chat templates iterate over them)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool answered to the call `call_id`."""

    call_id: str
    content: str
    name: str | None = None
    is_error: bool = False


Part = TextPart | ImagePart | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...] = ()
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined (what a text-only reader sees)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolCall))

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolResult))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))


def text_message(role: Role, text: str) -> Message:
    return Message(role, (TextPart(text),))


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its JSON Schema (an object schema)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """none / auto / required, or one named function (`mode` "function" with `name`); `parallel`: more than one call allowed."""

    mode: Literal["none", "auto", "required", "function"] = "auto"
    name: str | None = None
    parallel: bool = True


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """Free text, any JSON object, or JSON that fits `schema`."""

    kind: Literal["text", "json", "json_schema"] = "text"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every dialect (each adapter maps its own names onto these)."""

    max_tokens: int | None = None  # None: until end of generation or the context is full
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] | None = None
    # llama.vim / llama.vscode: after this many ms of decoding, stop at the next newline.
    t_max_predict_ms: float | None = None
    # Ollama `options.num_ctx`: this request's context limit, at most the model's (the pool enforces it).
    num_ctx: int | None = None
    # FIM answers end where the middle does (models/fim_end.py); False: the model's own end. None: the
    # server's `fim_trim` setting (applied when the request is submitted), on where no setting applies.
    fim_trim: bool | None = None


@dataclass(frozen=True)
class FimFile:
    """One repo-context chunk (llama.cpp `input_extra`): rendered as a `<|file_sep|>` block where the family has one."""

    text: str
    filename: str | None = None


@dataclass(frozen=True)
class Request:
    """One request in the internal form.

    kind == "chat":     messages (+ tools, tool_choice, output)
    kind == "complete": prompt (raw text; may already hold another family's FIM tokens, which
                        the backend rewrites into its own), and `system` where the dialect has one
    kind == "fim":      prefix, suffix, extra (and prompt appended to the prefix, llama.cpp style)
    kind == "embed":    inputs (texts or token ids), one vector each; `truncate` cuts what does not fit

    `endpoint` is the wire endpoint it came in on: the classifier's shape rules read it.
    """

    kind: Kind
    endpoint: str = "/v1/chat/completions"
    model: str | None = None  # as the client named it: `auto`, a label or a model id
    params: SamplingParams = field(default_factory=SamplingParams)
    messages: tuple[Message, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    output: OutputFormat = field(default_factory=OutputFormat)
    prompt: str = ""
    system: str = ""
    prefix: str = ""
    suffix: str = ""
    extra: tuple[FimFile, ...] = ()
    warmup: bool = False  # llama.cpp `n_predict: 0`: evaluate the prompt, generate nothing
    stream: bool = False  # the client reads events as they come (else tool calls are checked whole first)
    inputs: tuple[str | tuple[int, ...], ...] = ()
    truncate: bool = False  # an input longer than the context is cut (Ollama's default), else refused

    @property
    def prompt_field(self) -> str:
        """The body field a too-long prompt is blamed on."""
        return {"chat": "messages", "embed": "input"}.get(self.kind, "prompt")

    @property
    def generates(self) -> bool:
        """Whether it produces tokens (a warm-up and embeddings do not: no room is kept for one)."""
        return not self.warmup and self.kind != "embed"

"""Reads one request, in the internal form every dialect adapter produces, into the few facts the
classifier uses.

The adapters have already validated the request; what remains to refuse is what only the
classifier cares about (no user turn to answer, an empty current turn). All text goes through a
TextReader, so a request costs at most text.TEXT_BUDGET characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from classifier.agent_wrappers import SETUP_ACK_CHARS, is_setup_turn, is_wrapper_block, side_task, strip_wrappers
from classifier.errors import InvalidRequestShape
from classifier.text import (
    CONTEXT_CHARS,
    CURRENT_HEAD,
    CURRENT_TAIL,
    MAX_MESSAGES,
    MAX_PARTS,
    SCAN_HEAD,
    SCAN_TAIL,
    SETUP_WINDOW,
    SIDE_TASK_PEEK,
    WRAPPER_PEEK,
    TextReader,
)
from models.request import Message, Part, Request, TextPart

LONG_SYSTEM_CHARS = 2048  # a longer system prompt is a client's boilerplate (agents send 10-30 KB)


@dataclass(slots=True)
class RequestView:
    """The bounded view of one request the shape rules and the text model decide from."""

    endpoint: str
    current: str = ""  # current user turn or raw prompt, head+tail clipped
    scan: str = ""  # both ends of the raw prompt / current turn, for FIM tokens and code shape
    context: str = ""  # system prompt and the previous exchange, clipped
    infill: bool = False  # /infill: always FIM
    suffix_field: str | None = None  # name of the suffix/infill field present, if any
    prior_assistant: bool = False  # an earlier assistant turn exists
    many_messages: bool = False  # more messages than we look at: a conversation by any measure
    raw_prompt: bool = False  # a completion endpoint's prompt, not a chat message
    side_task: str | None = None  # an agent's side request (a title, a summary): the phrase that says so
    empty_prompt: bool = False
    chars_read: int = 0


def read_request(request: Request) -> RequestView:
    """The bounded view of `request` (the internal form, never a raw body)."""
    if not isinstance(request, Request):
        raise TypeError(f"the classifier reads a models.request.Request, not {type(request).__name__}")
    reader = TextReader()
    view = RequestView(endpoint=request.endpoint)
    if request.endpoint == "/infill":
        view.infill = True
        view.suffix_field = "input_suffix"
    elif request.kind == "chat":
        _read_messages(request.messages, view, reader, warmup=request.warmup)
    else:
        _read_prompt(request, view, reader)
    view.chars_read = reader.chars_read
    return view


def _parts_text(parts: Sequence[Part], reader: TextReader, head: int, tail: int) -> str:
    """The text parts of a message, clipped, agents' injected blocks left out: one part as a whole
    string, several within one budget."""
    texts = [p.text for p in parts[:MAX_PARTS] if isinstance(p, TextPart)]
    if len(texts) > 1:  # a part that is one injected block is skipped unread (its two ends tell)
        texts = [t for t in texts if not _wrapper_block(t, reader)] or texts[-1:]
    if len(texts) <= 1:
        return _unwrapped(reader.ends(texts[0], head, tail)) if texts else ""
    pieces: list[str] = []
    budget = head
    for text in texts:
        if budget <= 0:
            break
        piece = reader.ends(text, budget, min(tail, budget))
        pieces.append(piece)
        budget -= len(piece)
    return _unwrapped("\n".join(pieces))


def _unwrapped(text: str) -> str:
    """`text` without agents' injected blocks; all of it when nothing else is left (a turn that is
    only a reminder still has to be read as something)."""
    return strip_wrappers(text) or text


def _wrapper_block(text: str, reader: TextReader) -> bool:
    return is_wrapper_block(reader.head(text, WRAPPER_PEEK), reader.tail(text, WRAPPER_PEEK))


def _setup_turns(messages: Sequence[Message], current_index: int, reader: TextReader) -> set[int]:
    """Indexes of the turns an agent invented before the real question, among the first messages:
    a user turn that only sets up context, and the short acknowledgement answering it (qwen-code:
    "Got it. Thanks for the context!")."""
    setup: set[int] = set()
    looked = 0
    for i in range(min(current_index, MAX_MESSAGES)):
        message = messages[i]
        if message.role == "system":
            continue  # agents send several system/developer messages first; reading none of them
        looked += 1
        if looked > SETUP_WINDOW:
            break
        texts = [p.text for p in message.parts if isinstance(p, TextPart)]
        if message.role == "user" and texts:
            first = texts[0]
            if is_setup_turn(reader.head(first, WRAPPER_PEEK)) or (len(texts) == 1 and _wrapper_block(first, reader)):
                setup.add(i)
        elif (message.role == "assistant" and i - 1 in setup and not message.tool_calls
              and sum(len(t) for t in texts) <= SETUP_ACK_CHARS):
            setup.add(i)
    return setup


def _read_messages(messages: Sequence[Message], view: RequestView, reader: TextReader, *, warmup: bool) -> None:
    start = max(0, len(messages) - MAX_MESSAGES)
    view.many_messages = start > 0
    current_index = None
    for i in range(len(messages) - 1, start - 1, -1):
        if messages[i].role == "user":
            current_index = i
            break
    if current_index is None:
        raise InvalidRequestShape("holds no user message to answer", "messages")
    setup = _setup_turns(messages, current_index, reader) if start == 0 else set()
    view.prior_assistant = any(
        messages[i].role == "assistant" and i not in setup for i in range(start, current_index)
    )
    parts = messages[current_index].parts
    view.current = _parts_text(parts, reader, CURRENT_HEAD, CURRENT_TAIL)
    texts = [p for p in parts if isinstance(p, TextPart)]
    view.scan = reader.ends(texts[0].text, SCAN_HEAD, SCAN_TAIL) if len(texts) == 1 else view.current
    # An image alone is a question too; a warm-up (llama.cpp's `n_predict: 0`) may come before its turn is
    # typed (llama.vim warms its instruction's context so): the context then decides.
    if not view.current.strip() and not messages[current_index].images and not warmup:
        raise InvalidRequestShape("the current user message is empty", f"messages[{current_index}].content")
    view.context = _conversation_context(messages, start, current_index, setup, reader, view)


def _conversation_context(messages: Sequence[Message], start: int, current_index: int, setup: set[int],
                          reader: TextReader, view: RequestView) -> str:
    """System prompt (a short one: an agent's long boilerplate says nothing about this turn),
    previous user turn and the last answer before the current turn, clipped. Notes a side task
    that the system prompt or the lead-in turn sets."""
    system = previous_user = previous_answer = ""
    for i in range(start, current_index):
        if messages[i].role == "system":
            texts = [p.text for p in messages[i].parts if isinstance(p, TextPart)]
            head = reader.head(texts[0], SIDE_TASK_PEEK) if texts else ""
            view.side_task = view.side_task or side_task(head)
            if texts and len(texts[0]) <= LONG_SYSTEM_CHARS and not system:
                system = head[:CONTEXT_CHARS]
            break  # the first system message only: agents append more system text mid-conversation
    for i in range(current_index - 1, start - 1, -1):
        role, parts = messages[i].role, messages[i].parts
        if i in setup:
            continue
        if role == "user" and not view.side_task and i == current_index - 1:
            texts = [p.text for p in parts if isinstance(p, TextPart)]
            view.side_task = side_task(reader.head(texts[0], SIDE_TASK_PEEK)) if texts else None
        if role == "assistant" and not previous_answer:
            previous_answer = _parts_text(parts, reader, CONTEXT_CHARS // 2, CONTEXT_CHARS // 2)
        elif role == "user" and not previous_user:
            previous_user = _parts_text(parts, reader, CONTEXT_CHARS, 0)
        if previous_answer and previous_user:
            break
    return "\n".join(p for p in (system, previous_user, previous_answer) if p)


def _read_prompt(request: Request, view: RequestView, reader: TextReader) -> None:
    """A completion endpoint's prompt (for FIM, the text before the cursor) and its suffix."""
    view.raw_prompt = True
    prompt = request.prefix if request.kind == "fim" else request.prompt
    if request.kind == "fim" and request.suffix:
        view.suffix_field = "suffix"
    if request.system:
        view.context = reader.head(request.system, CONTEXT_CHARS)
    if not prompt.strip():
        view.empty_prompt = True
    view.current = reader.ends(prompt, CURRENT_HEAD, CURRENT_TAIL)
    view.scan = reader.ends(prompt, SCAN_HEAD, SCAN_TAIL)

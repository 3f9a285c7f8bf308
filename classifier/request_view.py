"""Reads one request, in any dialect the router speaks, into the few facts the classifier uses.

Validation lives here: a body of the wrong shape raises InvalidRequestShape naming the field.
All text goes through a TextReader, so a request costs at most text.TEXT_BUDGET characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from classifier.errors import InvalidRequestShape
from classifier.text import (
    CONTEXT_CHARS,
    CURRENT_HEAD,
    CURRENT_TAIL,
    MAX_MESSAGES,
    MAX_PARTS,
    SCAN_HEAD,
    SCAN_TAIL,
    TextReader,
)

CHAT_ENDPOINTS = ("/v1/chat/completions", "/api/chat")
PROMPT_ENDPOINTS = ("/v1/completions", "/completion", "/api/generate")
ENDPOINTS = CHAT_ENDPOINTS + PROMPT_ENDPOINTS + ("/infill",)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function", "ipython"})


@dataclass(slots=True)
class RequestView:
    """The bounded view of one request the shape rules and the text model decide from."""

    endpoint: str
    current: str = ""  # current user turn or raw prompt, head+tail clipped
    scan: str = ""  # both ends of the raw prompt / current turn, for FIM tokens and code shape
    context: str = ""  # system prompt and the previous exchange, clipped
    infill: bool = False  # /infill: always FIM
    suffix_field: str | None = None  # name of the suffix/infill field present, if any
    prior_assistant: bool = False  # an earlier assistant turn (or Ollama `context`) exists
    many_messages: bool = False  # more messages than we look at: a conversation by any measure
    token_prompt: bool = False  # prompt given as token ids: nothing to read
    raw_prompt: bool = False  # a completion endpoint's prompt, not a chat message
    empty_prompt: bool = False
    chars_read: int = 0


def read_request(endpoint: str, body: Any) -> RequestView:
    """Validate `body` for `endpoint` and read its bounded view."""
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise InvalidRequestShape(f"unsupported endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}", "endpoint")
    if not isinstance(body, dict):
        raise InvalidRequestShape(f"request body must be a JSON object, got {_type_name(body)}", "body")
    reader = TextReader()
    view = RequestView(endpoint=endpoint)
    if endpoint in CHAT_ENDPOINTS:
        _read_messages(body, view, reader)
    elif endpoint == "/infill":
        _read_infill(body, view, reader)
    else:
        _read_prompt(body, view, reader)
    view.chars_read = reader.chars_read
    return view


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _optional_str(body: dict, field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestShape(f"must be a string, got {_type_name(value)}", field)
    return value


def _content_text(content: Any, field: str, reader: TextReader, head: int, tail: int) -> str:
    """Text of a message's content: a string, or OpenAI content parts (text parts only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return reader.ends(content, head, tail)
    if isinstance(content, list):
        texts: list[str] = []
        budget = head
        for i, part in enumerate(content[:MAX_PARTS]):
            if not isinstance(part, dict):
                raise InvalidRequestShape(f"content part must be an object, got {_type_name(part)}", f"{field}[{i}]")
            text = part.get("text")
            if part.get("type", "text") == "text" and isinstance(text, str) and budget > 0:
                piece = reader.ends(text, budget, min(tail, budget))
                texts.append(piece)
                budget -= len(piece)
        return "\n".join(texts)
    raise InvalidRequestShape(f"content must be a string or a list of parts, got {_type_name(content)}", field)


def _read_messages(body: dict, view: RequestView, reader: TextReader) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequestShape("is required", "messages")
    if not isinstance(messages, list):
        raise InvalidRequestShape(f"must be a list of messages, got {_type_name(messages)}", "messages")
    if not messages:
        raise InvalidRequestShape("must hold at least one message", "messages")
    start = max(0, len(messages) - MAX_MESSAGES)
    view.many_messages = start > 0
    current_index = None
    for i in range(len(messages) - 1, start - 1, -1):
        message = messages[i]
        if not isinstance(message, dict):
            raise InvalidRequestShape(f"must be an object, got {_type_name(message)}", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestShape(f"unknown role {role!r}", f"messages[{i}].role")
        if role == "user" and current_index is None:
            current_index = i
        elif role == "assistant" and current_index is not None:
            view.prior_assistant = True
    if current_index is None:
        raise InvalidRequestShape("holds no user message to answer", "messages")
    current = messages[current_index].get("content")
    field = f"messages[{current_index}].content"
    view.current = _content_text(current, field, reader, CURRENT_HEAD, CURRENT_TAIL)
    if isinstance(current, str):
        view.scan = reader.ends(current, SCAN_HEAD, SCAN_TAIL)
    else:
        view.scan = view.current
    if not view.current.strip():
        raise InvalidRequestShape("the current user message is empty", field)
    view.context = _conversation_context(messages, start, current_index, reader)


def _conversation_context(messages: list, start: int, current_index: int, reader: TextReader) -> str:
    """System prompt, previous user turn and the last answer before the current turn, clipped."""
    system = previous_user = previous_answer = ""
    for i in range(start, current_index):
        message = messages[i]
        role, content = message.get("role"), message.get("content")
        field = f"messages[{i}].content"
        if role in ("system", "developer") and not system:
            system = _content_text(content, field, reader, CONTEXT_CHARS, 0)
    for i in range(current_index - 1, start - 1, -1):
        role, content = messages[i].get("role"), messages[i].get("content")
        field = f"messages[{i}].content"
        if role == "assistant" and not previous_answer:
            previous_answer = _content_text(content, field, reader, CONTEXT_CHARS // 2, CONTEXT_CHARS // 2)
        elif role == "user" and not previous_user:
            previous_user = _content_text(content, field, reader, CONTEXT_CHARS, 0)
        if previous_answer and previous_user:
            break
    return "\n".join(p for p in (system, previous_user, previous_answer) if p)


def _read_infill(body: dict, view: RequestView, reader: TextReader) -> None:
    view.infill = True
    prefix = _optional_str(body, "input_prefix")
    suffix = _optional_str(body, "input_suffix")
    prompt = _optional_str(body, "prompt")
    extra = body.get("input_extra")
    if extra is not None:
        if not isinstance(extra, list):
            raise InvalidRequestShape(f"must be a list of {{text, filename}} chunks, got {_type_name(extra)}", "input_extra")
        for i, chunk in enumerate(extra[:MAX_PARTS]):
            if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str):
                raise InvalidRequestShape("must be an object with a string `text`", f"input_extra[{i}]")
    if prefix is None and suffix is None and prompt is None:
        raise InvalidRequestShape("is required (with input_suffix)", "input_prefix")
    view.suffix_field = "input_suffix"


def _read_prompt(body: dict, view: RequestView, reader: TextReader) -> None:
    view.raw_prompt = True
    prompt = body.get("prompt")
    if view.endpoint == "/api/generate":
        suffix = _optional_str(body, "suffix")
        if suffix:
            view.suffix_field = "suffix"
        system = _optional_str(body, "system")
        if system:
            view.context = reader.head(system, CONTEXT_CHARS)
        context = body.get("context")
        if context is not None and not isinstance(context, list):
            raise InvalidRequestShape(f"must be a list of token ids, got {_type_name(context)}", "context")
        view.prior_assistant = bool(context)
    else:
        suffix = body.get("suffix") if view.endpoint == "/v1/completions" else None
        if suffix is not None and not isinstance(suffix, str):
            raise InvalidRequestShape(f"must be a string, got {_type_name(suffix)}", "suffix")
        if suffix:
            view.suffix_field = "suffix"
    if prompt is None:
        if view.endpoint == "/api/generate":
            prompt = ""
        else:
            raise InvalidRequestShape("is required", "prompt")
    if isinstance(prompt, list):
        prompt = _first_prompt(prompt)
        if prompt is None:
            view.token_prompt = True
            return
    if not isinstance(prompt, str):
        raise InvalidRequestShape(f"must be a string, a list of strings or token ids, got {_type_name(prompt)}", "prompt")
    if not prompt.strip():
        view.empty_prompt = True
    view.current = reader.ends(prompt, CURRENT_HEAD, CURRENT_TAIL)
    view.scan = reader.ends(prompt, SCAN_HEAD, SCAN_TAIL)


def _first_prompt(prompt: list) -> str | None:
    """OpenAI/llama.cpp prompts may be a batch of strings or token ids: read the first string."""
    if not prompt:
        raise InvalidRequestShape("must not be an empty list", "prompt")
    first = prompt[0]
    if isinstance(first, str):
        return first
    if isinstance(first, int) and not isinstance(first, bool):
        return None
    if isinstance(first, list) and all(isinstance(t, int) for t in first[:MAX_PARTS]):
        return None
    raise InvalidRequestShape(f"must be a string, a list of strings or token ids, got a list of {_type_name(first)}", "prompt")

"""Typed messages written out for a model: as a chat template's dicts, or as OpenAI wire JSON.

Chat templates (HF/GGUF Jinja) want `content` as a string and tool-call arguments as objects
(some iterate over them); an OpenAI-compatible upstream wants arguments as a JSON string and
images as `image_url` parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from models.errors import UnsupportedParameter
from models.request import ImagePart, Message, OutputFormat, TextPart, Tool, ToolChoice


def template_messages(messages: Sequence[Message], model_id: str) -> list[dict[str, Any]]:
    """Messages for a local chat template; images are refused (no local model reads them yet)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.images:
            j = next(j for j, p in enumerate(message.parts) if isinstance(p, ImagePart))
            raise UnsupportedParameter(
                f"Model {model_id!r} reads text only: messages[{i}] holds an image.", param=f"messages[{i}].content[{j}]"
            )
        results = message.tool_results
        if results:
            out += [{"role": "tool", "content": r.content, "tool_call_id": r.call_id,
                     **({"name": r.name} if r.name else {})} for r in results]
            continue
        rendered: dict[str, Any] = {"role": message.role, "content": message.text}
        calls = message.tool_calls
        if calls:
            rendered["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        out.append(rendered)
    return out


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as OpenAI chat JSON, for an upstream server."""
    out: list[dict[str, Any]] = []
    for message in messages:
        results = message.tool_results
        if results:
            out += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in results]
            continue
        rendered: dict[str, Any] = {"role": message.role, "content": _openai_content(message.parts)}
        if message.name:
            rendered["name"] = message.name
        calls = message.tool_calls
        if calls:
            rendered["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in calls
            ]
        out.append(rendered)
    return out


def _openai_content(parts: Sequence[object]) -> str | list[dict[str, Any]]:
    if not any(isinstance(p, ImagePart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart):
            out.append({"type": "image_url", "image_url": {"url": p.url}})
    return out



def openai_tools(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Tools in the OpenAI chat shape, as the client sent them (chat templates read the same shape)."""
    out = []
    for t in tools:
        function: dict[str, Any] = {"name": t.name, "description": t.description, "parameters": t.parameters}
        if t.strict:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def openai_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def openai_response_format(output: OutputFormat) -> dict[str, Any] | None:
    if output.kind == "json":
        return {"type": "json_object"}
    if output.kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": output.schema, "strict": True}}
    return None

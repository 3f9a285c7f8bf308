"""Checks on a request's tools, tool history and output schema, before any model sees it.

Every dialect builds the internal Request and then calls `check_tool_request`, so a malformed
schema, a result for a call that was never made or a schema the grammar cannot enforce is one
clear 400 in the caller's own dialect (the param names follow the wire shape the dialects share),
never a model's confusion or a 5xx.
"""

from __future__ import annotations

from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from models.errors import InvalidRequest
from models.grammar import refuse_unenforced
from models.request import Request


def check_schema(schema: Any, param: str) -> None:
    """`schema` is a JSON Schema its own metaschema accepts."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"`{param}` must be a JSON Schema object, not {type(schema).__name__}.", param=param)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        raise InvalidRequest(f"`{param}` is not a valid JSON Schema at {where}: {exc.message}", param=param) from None


def check_tool_request(request: Request, output_param: str = "response_format",
                       tool_param: str = "tools[{i}].function") -> None:
    """Raise InvalidRequest on the first thing about tools or structured output that cannot be honoured;
    `tool_param` is where the dialect keeps a tool's name and `parameters` (Anthropic: `tools[{i}]`)."""
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        where = tool_param.format(i=i)
        param = f"{where}.parameters" if tool_param.endswith(".function") else f"{where}.input_schema"
        check_schema(tool.parameters, param)
        if tool.parameters.get("type", "object") != "object":
            raise InvalidRequest(f"`{param}` must describe an object (`\"type\": \"object\"`): arguments are named.",
                                 param=param)
        if tool.name in names:
            raise InvalidRequest(f"Two tools are named `{tool.name}`.", param=f"{where}.name")
        names.add(tool.name)
    choice = request.tool_choice
    if choice.mode in ("required", "function") and not request.tools:
        raise InvalidRequest(f"`tool_choice` {choice.mode!r} needs `tools`.", param="tool_choice")
    if choice.mode == "function" and choice.name not in names:
        raise InvalidRequest(f"`tool_choice` names `{choice.name}`, which is not among the tools.", param="tool_choice")
    _check_results(request)
    if request.output.kind == "json_schema" and request.output.schema is not None:
        check_schema(request.output.schema, output_param)
        refuse_unenforced(request.output.schema, output_param)


def _check_results(request: Request) -> None:
    """Each tool result answers a call made earlier in the conversation (by id, or by name where the dialect has no ids)."""
    ids: set[str] = set()
    call_names: set[str] = set()
    for i, message in enumerate(request.messages):
        for call in message.tool_calls:
            ids.add(call.id)
            call_names.add(call.name)
        for result in message.tool_results:
            if result.call_id:
                if result.call_id not in ids:
                    raise InvalidRequest(
                        f"`messages[{i}]` is a tool result for call `{result.call_id}`, but no earlier assistant "
                        "message made a call with that id.", param=f"messages[{i}].tool_call_id")
            elif not call_names or (result.name and result.name not in call_names):
                what = f"tool `{result.name}`" if result.name else "a tool"
                raise InvalidRequest(f"`messages[{i}]` is a result of {what}, but no earlier assistant message called it.",
                                     param=f"messages[{i}]")

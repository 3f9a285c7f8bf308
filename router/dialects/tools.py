"""The OpenAI tool shapes (`tools`, `tool_choice`, `response_format`) that the OpenAI and Ollama dialects share.

Ollama's /api/chat takes the same `tools` list as OpenAI chat; Ollama's `format` maps onto the
same OutputFormat. Each dialect then runs models.tool_checks on the internal Request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.errors import InvalidRequest, UnsupportedParameter
from models.request import OutputFormat, Tool, ToolChoice

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1, max_length=128)
    description: str | None = None
    parameters: Any = Field(None, description="A JSON Schema object; leaving it out means no parameters.")
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "function"
    function: FunctionDefinition | None = None


def internal_tools(tools: list[ToolSpec] | None) -> tuple[Tool, ...]:
    out = []
    for i, spec in enumerate(tools or ()):
        if spec.type != "function" or spec.function is None:
            raise UnsupportedParameter(f"Only function tools are supported (tools[{i}] is `{spec.type}`).",
                                       param=f"tools[{i}].type")
        fn = spec.function
        if any(c.isspace() or c in "\"'<>" for c in fn.name):
            raise InvalidRequest(f"`tools[{i}].function.name` {fn.name!r} must not hold spaces, quotes or angle brackets.",
                                 param=f"tools[{i}].function.name")
        parameters = EMPTY_PARAMETERS if fn.parameters is None else fn.parameters
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"`tools[{i}].function.parameters` must be a JSON Schema object, not "
                                 f"{type(parameters).__name__}.", param=f"tools[{i}].function.parameters")
        out.append(Tool(fn.name, fn.description or "", parameters, bool(fn.strict)))
    return tuple(out)


def internal_tool_choice(value: str | dict[str, Any] | None, parallel: bool | None, tools: tuple[Tool, ...]) -> ToolChoice:
    """OpenAI's tool_choice: none / auto / required, a named function, or allowed_tools (mode over a subset)."""
    parallel = True if parallel is None else parallel
    if value is None:
        return ToolChoice("auto" if tools else "none", parallel=parallel)
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise InvalidRequest(f"`tool_choice` {value!r} is not one of none, auto, required.", param="tool_choice")
        return ToolChoice(value, parallel=parallel)  # type: ignore[arg-type]
    kind = value.get("type")
    if kind == "function" and isinstance(value.get("function"), dict) and isinstance(value["function"].get("name"), str):
        return ToolChoice("function", value["function"]["name"], parallel=parallel)
    raise UnsupportedParameter("`tool_choice` must be none, auto, required or {\"type\": \"function\", "
                               "\"function\": {\"name\": ...}}.", param="tool_choice")


def internal_response_format(value: dict[str, Any] | None) -> OutputFormat:
    if not value or value.get("type", "text") == "text":
        return OutputFormat()
    kind = value.get("type")
    if kind == "json_object":
        schema = value.get("schema")  # llama-cpp-python's own form carries a schema here
        return OutputFormat("json_schema", schema) if isinstance(schema, dict) else OutputFormat("json")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest("`response_format.json_schema` must be an object with `name` and `schema`.",
                                 param="response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            return OutputFormat("json")
        if not isinstance(schema, dict):
            raise InvalidRequest("`response_format.json_schema.schema` must be a JSON Schema object.",
                                 param="response_format.json_schema.schema")
        return OutputFormat("json_schema", schema)
    raise UnsupportedParameter(f"`response_format` type {kind!r} is not one of text, json_object, json_schema.",
                               param="response_format.type")


def ollama_format(value: str | dict[str, Any] | None) -> OutputFormat:
    """Ollama's `format`: "json" or a JSON Schema."""
    if value in (None, ""):
        return OutputFormat()
    if value == "json":
        return OutputFormat("json")
    if isinstance(value, dict):
        return OutputFormat("json_schema", value)
    raise InvalidRequest(f"`format` must be \"json\" or a JSON Schema object, not {value!r}.", param="format")

"""JSON Schema to llama.cpp GBNF: the one converter for structured output and tool arguments.

llama-cpp-python ships llama.cpp's own converter (`SchemaConverter`, a port of
json_schema_to_grammar), so this module only adds what a router needs around it: schemas it
cannot enforce are refused by name for `response_format` (the answer must validate), and relaxed
for tool parameters (agents send `minimum` and friends on every turn; a call that ignores a
bound is still far better than a refused turn). Rules of several schemas share one converter,
so a tool-call grammar is one GBNF text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from models.errors import InvalidRequest, UnsupportedParameter

# Keywords jsonschema validates but the converter does not enforce (it ignores them silently).
UNENFORCED = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "not", "if", "then", "else",
    "patternProperties", "propertyNames", "uniqueItems", "contains", "minContains", "maxContains",
    "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies",
    "unevaluatedProperties", "unevaluatedItems", "additionalItems",
)
# Keywords whose value is a schema or a list/map of schemas (where the walk goes on).
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


class SchemaNotSupported(UnsupportedParameter):
    """A schema construct the grammar cannot enforce, named with where it sits."""


def _walk(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SUBSCHEMA_KEYS:
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], f"{path}/{key}")
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield from _walk(sub, f"{path}/{key}/{i}")
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _walk(sub, f"{path}/{key}/{name}")


def refuse_unenforced(schema: dict[str, Any], param: str) -> None:
    """Raise SchemaNotSupported naming the first construct the grammar would not enforce."""
    for path, node in _walk(schema, "#"):
        for key in UNENFORCED:
            if key in node:
                raise SchemaNotSupported(
                    f"`{param}`: the JSON Schema keyword `{key}` (at {path}) cannot be enforced by the grammar, so "
                    "the answer could break the schema. Remove it (or validate it yourself after the answer).",
                    param=param,
                )
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise SchemaNotSupported(f"`{param}`: remote `$ref` {ref!r} (at {path}) is not fetched; inline it.",
                                     param=param)


def relaxed(schema: Any) -> Any:
    """`schema` without the keywords the grammar ignores anyway (so conversion never trips on them)."""
    if isinstance(schema, list):
        return [relaxed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: (v if k in ("enum", "const", "required", "default", "examples") else relaxed(v))
            for k, v in schema.items() if k not in UNENFORCED}


# Keywords that describe a value without constraining it: a subschema holding only these (or
# nothing) accepts any JSON value. Claude Code's Workflow tool has such a property (`args`).
ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "deprecated", "readOnly",
                         "writeOnly", "$schema", "$id"})
ANY_VALUE: dict[str, Any] = {"type": ["string", "number", "boolean", "object", "array", "null"]}


def untyped_as_any(schema: Any, root: bool = True) -> Any:
    """`schema` with every annotation-only subschema spelled as "any JSON value": llama-cpp-python's
    converter reads `{}` as an object and refuses `{"description": ...}` ("Unrecognized schema")."""
    if isinstance(schema, list):
        return [untyped_as_any(s, root=False) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if not root and set(schema) <= ANNOTATIONS:
        return {**schema, **ANY_VALUE}
    out = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_KEYS or key in _SUBSCHEMA_LISTS:
            out[key] = untyped_as_any(value, root=False)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: untyped_as_any(sub, root=False) for name, sub in value.items()}
        else:
            out[key] = value
    return out


class GrammarBuilder:
    """Rules from several schemas (and hand-written wrappers) in one GBNF text."""

    def __init__(self) -> None:
        self._converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def schema(self, schema: dict[str, Any], name: str, param: str) -> str:
        """Add `schema`'s rules under `name`; returns the rule name. Raises InvalidRequest on a schema it cannot read."""
        conv = self._converter
        try:
            resolved = conv.resolve_refs(untyped_as_any(json.loads(json.dumps(schema))), f"{name}.json")
            return conv.visit(resolved, name)
        except (AssertionError, KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
            raise InvalidRequest(f"`{param}`: the JSON Schema cannot be turned into a grammar ({exc or type(exc).__name__}).",
                                 param=param) from None

    def rule(self, name: str, body: str) -> str:
        return self._converter._add_rule(name, body)

    def literal(self, text: str) -> str:
        return self._converter._format_literal(text)

    def text(self, root_body: str) -> str:
        """The whole grammar with `root ::= root_body`."""
        self._converter._rules["root"] = root_body
        return self._converter.format_grammar()


def json_output_grammar(schema: dict[str, Any] | None, param: str) -> str:
    """The grammar of a structured answer: any JSON object, or JSON that fits `schema` (refused if unenforceable)."""
    builder = GrammarBuilder()
    if schema is None:
        top = builder.schema({"type": "object"}, "answer", param)
    else:
        refuse_unenforced(schema, param)
        top = builder.schema(schema, "answer", param)
    return builder.text(f"{top}")

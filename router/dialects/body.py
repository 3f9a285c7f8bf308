"""Reading a request body: JSON whatever the Content-Type says (curl sends form types), checked text.

Each dialect validates the parsed object with its own pydantic model (and turns it into the
internal Request, once); failures become one InvalidRequest naming the field. The model's JSON schema is published in the OpenAPI document
(inlined, so schema-driven fuzzers see every field).
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from models.errors import InvalidRequest
from models.request import Request as InternalRequest
from router.errors import from_validation_errors

M = TypeVar("M", bound=BaseModel)


class BodyModel(Protocol):
    """A dialect's pydantic body model: it knows the internal Request it stands for."""

    def to_request(self) -> InternalRequest: ...

# NUL and lone surrogates (which JSON "\ud800" escapes can produce) break tokenizers and logs.
BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def check_text(value: Any, path: str = "") -> None:
    """Refuse NUL characters and unpaired surrogates anywhere in the body, naming where."""
    if isinstance(value, str):
        found = BAD_TEXT.search(value)
        if found:
            what = "a NUL character" if found.group() == "\x00" else "an unpaired UTF-16 surrogate (not valid Unicode)"
            raise InvalidRequest(f"`{path or 'body'}` contains {what}.", param=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, path)
            check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text(item, f"{path}[{i}]")


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object (GET-like callers)."""
    raw = await request.body()
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except UnicodeDecodeError:
            raise InvalidRequest("The request body is not valid UTF-8.") from None
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_text(data)
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Locations as FastAPI reports them (under "body"), so a field named `body` keeps its name.
        raise from_validation_errors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def parse_data(model: type[M], data: dict[str, Any]) -> tuple[M, InternalRequest]:
    """(validated body, internal Request): the one parse every dialect and `/v1/route` share."""
    body = validate(model, data)
    internal: BodyModel = body  # type: ignore[assignment]  # every dialect body model has to_request
    return body, internal.to_request()


async def parse(request: Request, model: type[M]) -> tuple[M, InternalRequest]:
    """The HTTP request's body, read and parsed by `model`."""
    return parse_data(model, await read_json(request))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve `#/$defs/...` references in place, so the schema stands alone inside OpenAPI."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 20:
                target = dict(defs[ref.split("/")[-1]])
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return resolve({**target, **rest}, depth + 1)
            return {k: resolve(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, depth) for v in node]
        return node

    return resolve(schema)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body this model describes."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_refs(model.model_json_schema())}},
        }
    }

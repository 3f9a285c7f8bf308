"""Every failure becomes one RouterError, rendered once per dialect (chosen by the path prefix).

OpenAI (chat, completions, Responses): {"error": {"message", "type", "param", "code"}}; Ollama:
{"error": "..."}; llama.cpp: {"error": {"code", "message", "type"}}; Anthropic: {"type": "error",
"error": {"type", "message"}}. Nothing ever leaves as a bare traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier import InvalidRequestShape
from models.errors import InvalidRequest, Overloaded, RouterError

log = logging.getLogger("router.errors")

OPENAI, OLLAMA, LLAMACPP, ANTHROPIC = "openai", "ollama", "llamacpp", "anthropic"

# Anthropic names its error types by HTTP status (anthropic-sdk-python shared/error_type).
ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 499: "api_error", 500: "api_error", 501: "invalid_request_error",
    502: "api_error", 503: "overloaded_error", 504: "timeout_error",
}


class EndpointNotFound(RouterError):
    """No such path (or no such method on it)."""

    status = 404
    code = "not_found"
    type = "invalid_request_error"


class MethodNotAllowed(RouterError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


class NotSupported(RouterError):
    """An endpoint or feature the router knowingly does not offer (llama.cpp's 501 `not_supported`)."""

    status = 501
    code = "not_supported"
    type = "not_supported_error"


class InternalError(RouterError):
    """Anything unexpected: logged with its traceback here, answered without it."""

    status = 500
    code = "internal_error"
    type = "server_error"


def dialect_for_path(path: str) -> str:
    """Which dialect a path speaks: /api/* and / are Ollama, /v1/messages Anthropic, /v1/* and /chat/completions
    OpenAI, the rest llama.cpp."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ANTHROPIC
    if path == "/" or path.startswith("/api/"):
        return OLLAMA
    if path.startswith("/v1/") or path == "/chat/completions":  # llama-server's unprefixed OpenAI chat
        return OPENAI
    return LLAMACPP


def error_body(dialect: str, err: RouterError) -> dict[str, Any]:
    """The error object in the dialect's own shape."""
    if dialect == OLLAMA:
        return {"error": err.message}
    if dialect == OPENAI:
        return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    if dialect == ANTHROPIC:
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(err.status, "api_error"), "message": err.message}}
    return {"error": {"code": err.status, "message": err.message, "type": err.type}}


def error_headers(err: RouterError) -> dict[str, str]:
    """Retry hints: when to come back from a full queue; never retry a 501 (the openai and anthropic
    SDKs otherwise retry every 5xx, three times)."""
    if isinstance(err, Overloaded):
        return {"Retry-After": str(max(1, int(round(err.retry_after))))}
    if err.status == 501:
        return {"x-should-retry": "false"}
    return {}


def error_response(dialect: str, err: RouterError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(dialect, err), status_code=err.status, headers={**error_headers(err), **(headers or {})})


# Pydantic names the branch of a `str | int | ...` union in the error location; no field has these names.
UNION_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list", "json-or-python"})


def field_path(loc: tuple | list) -> str | None:
    """Pydantic's loc ('body', 'messages', 0, 'role') as the caller wrote it: messages[0].role."""
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path"):
            continue  # where FastAPI found it; a field may itself be named `body`
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part.startswith("function-") or part in UNION_TAGS):
            continue  # pydantic's union-branch tags, not a field
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_validation_errors(errors: list[dict]) -> InvalidRequest:
    """Pydantic errors as one InvalidRequest that names the first offending field."""
    first = errors[0] if errors else {}
    param = field_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", param=None)
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    msg = first.get("msg", "invalid value")
    return InvalidRequest(f"Invalid value for `{param}`: {msg}" if param else msg, param=param)


def as_router_error(exc: BaseException) -> RouterError:
    """Any exception as the RouterError the caller should see."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(list(exc.errors()))
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return InvalidRequest("The request body is not valid UTF-8 JSON.")
    if isinstance(exc, InvalidRequestShape):
        # A body the classifier cannot read is the caller's mistake, not ours.
        return InvalidRequest(str(exc.args[0]) if exc.args else str(exc), param=getattr(exc, "field", None))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return EndpointNotFound("No such endpoint.")
        if exc.status_code == 405:
            return MethodNotAllowed("Method not allowed on this endpoint.")
        err = RouterError(str(exc.detail))
        err.status = exc.status_code
        err.code = "http_error"
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return err
    return InternalError(f"Internal error ({exc.__class__.__name__}); see the router's log.")


def route_headers_of(request: Request) -> dict[str, str]:
    """x-route-* headers when the request got as far as routing."""
    route = getattr(request.state, "route", None)  # request-scoped: set once routing happened
    return route.headers() if route is not None else {}


def install_error_handlers(app: FastAPI) -> None:
    """Register the one translation for every exception type FastAPI can surface."""

    async def handle(request: Request, exc: Exception) -> Response:
        err = as_router_error(exc)
        if isinstance(err, InternalError):
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        request.app.state.app_state.metrics.count_error(request, err)
        return error_response(dialect_for_path(request.url.path), err, route_headers_of(request))

    app.add_exception_handler(RouterError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(ValueError, handle)
    app.add_exception_handler(Exception, handle)

"""Which adapter parses which endpoint's body: the one way from raw JSON to the internal Request.

Used wherever a body arrives without its own HTTP route: `/v1/route`, the classifier's training
and evaluation data, the CLI. The HTTP handlers call the same parse functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.errors import InvalidRequest
from models.request import Request
from router.dialects import llamacpp, ollama, openai

PARSERS: dict[str, Callable[[dict[str, Any]], tuple[Any, Request]]] = {
    "/v1/chat/completions": openai.parse_chat,
    "/v1/completions": openai.parse_completion,
    "/infill": llamacpp.parse_infill,
    "/completion": llamacpp.parse_completion,
    "/api/generate": ollama.parse_generate,
    "/api/chat": ollama.parse_chat,
}
ENDPOINTS = tuple(PARSERS)


def parse_request(endpoint: str, body: Any) -> Request:
    """`body` as the adapter of `endpoint` parses it; InvalidRequest names what is wrong."""
    parser = PARSERS.get(endpoint)
    if parser is None:
        raise InvalidRequest(f"`endpoint` must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    return parser(body)[1]

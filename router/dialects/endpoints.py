"""Which adapter parses which endpoint's body: the one way from raw JSON to the internal Request.

Used wherever a body arrives without its own HTTP route: `/v1/route`, the classifier's training
and evaluation data, the CLI. The HTTP handlers parse with the same body models (router/dialects/body.py `parse`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models.errors import InvalidRequest
from models.request import Request
from router.dialects import anthropic, llamacpp, ollama, openai, responses
from router.dialects.body import parse_data

BODY_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": openai.ChatRequest,
    "/v1/completions": openai.CompletionRequest,
    "/v1/responses": responses.ResponsesRequest,
    "/v1/messages": anthropic.MessagesRequest,
    "/infill": llamacpp.InfillRequest,
    "/completion": llamacpp.LlamaCompletionRequest,
    "/api/generate": ollama.GenerateRequest,
    "/api/chat": ollama.OllamaChatRequest,
}
ENDPOINTS = tuple(BODY_MODELS)


def parse_request(endpoint: str, body: Any) -> Request:
    """`body` as the adapter of `endpoint` parses it; InvalidRequest names what is wrong."""
    model = BODY_MODELS.get(endpoint)
    if model is None:
        raise InvalidRequest(f"`endpoint` must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    return parse_data(model, body)[1]

"""The error hierarchy every layer raises; each dialect translates it once (router/errors.py).

Each error carries the HTTP status and a stable machine code so that OpenAI, Ollama and
llama.cpp clients all get the same facts in their own shape.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router reports to a caller."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra


class InvalidRequest(RouterError):
    """The request is malformed: bad JSON, a wrong type, a missing field, a value out of range."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    """A parameter we cannot honour; refused rather than silently ignored."""

    code = "unsupported_parameter"


class ModelNotFound(RouterError):
    """The caller named a model that is neither `auto`, a label, nor a catalog id."""

    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class ContextLengthExceeded(RouterError):
    """The prompt (plus requested tokens) does not fit the model's context: refused before any work."""

    status = 400
    code = "context_length_exceeded"
    type = "invalid_request_error"


class FimNotSupported(RouterError):
    """FIM was asked of a model whose vocabulary has no FIM tokens (llama.cpp answers 501)."""

    status = 501
    code = "not_supported"
    type = "not_supported_error"


class Overloaded(RouterError):
    """The model's queue is full: designed backpressure, 503 with Retry-After."""

    status = 503
    code = "overloaded"
    type = "server_error"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: object) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelLoadFailed(RouterError):
    """A model's GGUF is missing, corrupt or failed to load; only that model is affected."""

    status = 503
    code = "model_load_failed"
    type = "server_error"


class WeightsUnavailable(RouterError):
    """Weights are not cached and cannot be fetched (offline, no mirror, checksum mismatch)."""

    status = 503
    code = "weights_unavailable"
    type = "server_error"


class UpstreamUnavailable(RouterError):
    """Every replica of an upstream model failed or timed out."""

    status = 502
    code = "upstream_unavailable"
    type = "server_error"


class Cancelled(RouterError):
    """The caller went away or a newer request superseded this one."""

    status = 499
    code = "cancelled"
    type = "server_error"


class PayloadTooLarge(RouterError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class Unauthorized(RouterError):
    """An API key is configured and the request did not present it."""

    status = 401
    code = "invalid_api_key"
    type = "authentication_error"

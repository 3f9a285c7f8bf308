"""The classifier's two failure modes: a request it cannot read, an artifact it will not trust."""

from __future__ import annotations


class InvalidRequestShape(ValueError):
    """The request body does not have the shape its endpoint requires; `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ArtifactError(RuntimeError):
    """The text model's artifact is missing, unreadable, tampered with or holds untrusted types."""

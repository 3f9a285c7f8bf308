"""What the classifier answers: a label, how sure it is, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.labels import Label


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision; `reasons` name the shape rule that fired or the top weighted text features."""

    label: Label
    confidence: float
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"label": self.label.value, "confidence": round(self.confidence, 4), "reasons": list(self.reasons)}

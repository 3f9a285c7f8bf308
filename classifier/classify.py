"""The classifier: shape rules first, then the text model for "code work or not"."""

from __future__ import annotations

from pathlib import Path

from classifier.code_shape import code_line_count
from classifier.decision import Decision
from classifier.features import compose_document
from classifier.model import DEFAULT_ARTIFACT, TextModel
from classifier.request_view import RequestView, read_request
from classifier.shape import conversation_label, shape_decision
from models.request import Request


class Classifier:
    """Decides code_edit / fim / chat / instruct for one request in any supported dialect."""

    def __init__(self, text_model: TextModel | None) -> None:
        self.text_model = text_model

    @classmethod
    def load(cls, path: Path | None = None) -> Classifier:
        """The shipped skops artifact (or `path`); raises ArtifactError when missing or untrusted."""
        return cls(TextModel.load(Path(path) if path is not None else DEFAULT_ARTIFACT))

    @classmethod
    def shape_only(cls) -> Classifier:
        """Shape rules plus a crude code-shape signal, no text model: the fallback."""
        return cls(None)

    @property
    def mode(self) -> str:
        return "shape+text" if self.text_model is not None else "shape-only"

    def classify(self, request: Request) -> Decision:
        """The decision for one request (as a dialect adapter parsed it); raises InvalidRequestShape
        when it holds nothing to classify (no user turn, an empty one)."""
        view = read_request(request)
        decided = shape_decision(view)
        if decided is not None:
            return decided
        return self._decide_text(view)

    def _decide_text(self, view: RequestView) -> Decision:
        if self.text_model is None:
            code_lines = code_line_count(view.current)
            code_work = code_lines >= 2 or "```" in view.current
            label, why = conversation_label(view, code_work)
            return Decision(label, 0.6, [why, f"shape-only: {code_lines} code-like lines, no text model loaded"])
        scored = self.text_model.score(compose_document(view.current, view.context))
        code_work = scored.p_code >= 0.5
        label, why = conversation_label(view, code_work)
        confidence = scored.p_code if code_work else 1.0 - scored.p_code
        features = ", ".join(f"{_readable(name)} ({weight:+.2f})" for name, weight in scored.top_features)
        reasons = [why, f"text: P(code work) = {scored.p_code:.3f}"]
        if features:
            reasons.append(f"text: top features {features}")
        return Decision(label, confidence, reasons)


_KINDS = {"w": "word", "b": "bigram", "c": "chars", "s": "shape", "x": "context"}


def _readable(feature: str) -> str:
    kind, _, value = feature.partition(":")
    return f"{_KINDS.get(kind, kind)} {value!r}"

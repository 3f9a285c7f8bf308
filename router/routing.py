"""Routing: turn (endpoint, body, requested model) into the model that answers and why.

`auto` (or no model) asks the classifier; a label forces that label's model; a catalog id
bypasses routing (the label is still classified, for headers and metrics); anything else is
ModelNotFound, never a silent fallback. Shared by the HTTP app and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.errors import FimNotSupported, ModelNotFound

if TYPE_CHECKING:  # imported for types only: the router works with any object of these shapes
    from classifier import Classifier
    from models.catalog import Catalog, ModelSpec
    from models.pool import Pool

LABELS: tuple[str, ...] = ("code_edit", "fim", "chat", "instruct")
AUTO_NAMES = frozenset({"", "auto", "router", "route"})

# When a catalog has no model for a label, the nearest label that has one answers instead;
# the reasons say so. `fim` never borrows: only a FIM-capable model may answer it.
LABEL_FALLBACKS: dict[str, tuple[str, ...]] = {
    "code_edit": ("instruct", "chat"),
    "chat": ("instruct", "code_edit"),
    "instruct": ("chat", "code_edit"),
    "fim": (),
}


@dataclass(frozen=True)
class Route:
    """The decision: which label the request is, how sure, which model answers, and why."""

    label: str
    confidence: float
    model_id: str
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "model": self.model_id,
            "reasons": list(self.reasons),
        }


def label_value(label: Any) -> str:
    """A classifier Label (a str Enum) or a plain string, as the plain label name."""
    return str(getattr(label, "value", label))


class Router:
    """Picks a model for each request from the catalog, the classifier's decision and the pool's knowledge."""

    def __init__(self, catalog: Catalog, classifier: Classifier, pool: Pool | None = None) -> None:
        self.catalog = catalog
        self.classifier = classifier
        self.pool = pool

    def route(self, endpoint: str, body: dict, requested_model: str | None = None) -> Route:
        """Decide; raises ModelNotFound (unknown name), FimNotSupported (no FIM model), InvalidRequestShape."""
        requested = self._normalise(requested_model)
        if requested not in AUTO_NAMES and requested not in LABELS and self.catalog.get(requested) is None:
            raise ModelNotFound(
                f"The model `{requested_model}` does not exist. Use `auto`, a label "
                f"({', '.join(LABELS)}) or one of: {', '.join(self.model_ids()) or '(no models configured)'}.",
                param="model",
            )
        decision = self.classifier.classify(endpoint, body)
        label = label_value(decision.label)
        reasons = [str(r) for r in decision.reasons]
        confidence = float(decision.confidence)

        if requested in AUTO_NAMES:
            spec, why = self.model_for_label(label)
            return Route(label, confidence, spec.id, reasons + why)
        if requested in LABELS:
            spec, why = self.model_for_label(requested)
            forced = [f"model `{requested}` forces label {requested} (classifier said {label})"]
            return Route(requested, 1.0, spec.id, forced + why)
        return Route(label, confidence, requested, reasons + [f"model `{requested}` named explicitly: no routing"])

    def model_for_label(self, label: str) -> tuple[ModelSpec, list[str]]:
        """The model serving `label` (or the nearest label's), with a reason when it had to borrow."""
        for candidate in (label, *LABEL_FALLBACKS.get(label, ())):
            for spec in self.catalog.models:
                if candidate not in [label_value(lbl) for lbl in spec.labels]:
                    continue
                if label == "fim" and self.fim_capable(spec) is False:
                    continue
                why = [] if candidate == label else [f"no model serves {label}; {spec.id} (serves {candidate}) answers"]
                return spec, why
        if label == "fim":
            # Any model we know can do FIM is better than a 501, and the reasons say so.
            for spec in self.catalog.models:
                if self.fim_capable(spec):
                    return spec, [f"no model serves fim; {spec.id} is FIM-capable and answers"]
            raise FimNotSupported("No FIM-capable model is configured: add a model with the `fim` label.", param="model")
        if self.catalog.models:
            # Any model can chat or complete text: a one-model setup answers everything, and says so.
            spec = self.catalog.models[0]
            return spec, [f"no model serves {label} or a nearby label; {spec.id} answers"]
        raise ModelNotFound(f"No model is configured for label {label}.", param="model")

    def fim_capable(self, spec: ModelSpec) -> bool | None:
        """True/False when known (catalog override or a loaded model's vocabulary), None when unknown yet."""
        if getattr(spec, "fim_family", None):
            return True
        source = getattr(spec, "source", None)
        if getattr(source, "fim_family", None):
            return True
        if self.pool is not None:
            for state in self.pool.status():
                if state.id == spec.id:
                    return getattr(state, "supports_fim", None)
        return None

    def model_ids(self) -> list[str]:
        return [spec.id for spec in self.catalog.models]

    def _normalise(self, requested: str | None) -> str:
        """Blank means auto; drop Ollama's implicit `:latest` tag when the bare name is known. No other
        rewriting: `tiny-qwen\n` is not `tiny-qwen` (an exact id or a 404, never a near match)."""
        name = requested or ""
        if not name.strip():
            return ""
        if name.endswith(":latest"):
            bare = name[: -len(":latest")]
            if bare in AUTO_NAMES or bare in LABELS or self.catalog.get(bare) is not None:
                return bare
        return name

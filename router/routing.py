"""Routing: turn a request (the internal form) into the model that answers and why.

`auto` (or no model) asks the classifier; a label forces that label's model; a catalog id
bypasses routing (the label is still classified, for headers and metrics); anything else is
ModelNotFound, never a silent fallback. Embedding models answer embeddings only, named by id (or
the first one for `auto`). Shared by the HTTP app and the CLI.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from classifier import Classifier
from models.capabilities import Capabilities, declared
from models.catalog import Catalog, ModelSpec
from models.errors import FimNotSupported, InvalidRequest, ModelNotFound, UnsupportedParameter
from models.labels import LABELS, Label
from models.pool import Pool
from models.request import Request
from router.errors import NotSupported

AUTO_NAMES = frozenset({"", "auto", "router", "route"})

# When a catalog has no model for a label, the nearest label that has one answers instead;
# the reasons say so. `fim` never borrows: only a FIM-capable model may answer it.
LABEL_FALLBACKS: dict[Label, tuple[Label, ...]] = {
    Label.code_edit: (Label.instruct, Label.chat),
    Label.chat: (Label.instruct, Label.code_edit),
    Label.instruct: (Label.chat, Label.code_edit),
    Label.fim: (),
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

    def headers(self) -> dict[str, str]:
        """The x-route-* headers every generated response (and every error after routing) carries."""
        return {
            "x-route-label": self.label,
            "x-route-model": self.model_id,
            "x-route-confidence": f"{self.confidence:.4f}",
        }


class Router:
    """Picks a model for each request from the catalog, the classifier's decision and the pool's knowledge."""

    def __init__(self, catalog: Catalog, classifier: Classifier, pool: Pool | None = None,
                 aliases: Mapping[str, str] | None = None) -> None:
        self.catalog = catalog
        self.classifier = classifier
        self.pool = pool
        self.aliases = dict(aliases or {})
        for pattern, target in self.aliases.items():
            if not self._known(target):
                raise ValueError(f"model_aliases: {pattern!r} maps to {target!r}, which is not `auto`, a label "
                                 f"({', '.join(LABELS)}) or a catalog model ({', '.join(self.model_ids())}).")

    def route(self, request: Request) -> Route:
        """Decide; raises ModelNotFound (unknown name), FimNotSupported (no FIM model), InvalidRequestShape."""
        requested = self._normalise(request.model)
        alias_why: list[str] = []
        if not self._known(requested):
            pattern = next((p for p in self.aliases if fnmatch.fnmatchcase(requested, p)), None)
            if pattern is not None:
                alias_why = [f"model `{request.model}` matches alias `{pattern}` -> {self.aliases[pattern]}"]
                requested = self.aliases[pattern]
        route = self._route(request, requested)
        return Route(route.label, route.confidence, route.model_id, alias_why + route.reasons) if alias_why else route

    def _known(self, name: str) -> bool:
        return name in AUTO_NAMES or name in LABELS or self.catalog.get(name) is not None

    def _route(self, request: Request, requested: str) -> Route:
        if not self._known(requested):
            raise ModelNotFound(
                f"The model `{request.model}` does not exist. Use `auto`, a label "
                f"({', '.join(LABELS)}) or one of: {', '.join(self.model_ids()) or '(no models configured)'}.",
                param="model",
            )
        spec = self.catalog.get(requested)
        if spec is not None and spec.embedding:
            raise InvalidRequest(f"The model `{requested}` is an embedding model: it answers /v1/embeddings and "
                                 "/api/embed, not generation.", param="model")
        decision = self.classifier.classify(request)
        label = decision.label.value
        if requested in AUTO_NAMES:
            spec, why = self.model_for_label(label)
            spec, tool_why = self._tool_capable(spec, request)
            return Route(label, decision.confidence, spec.id, decision.reasons + why + tool_why)
        if requested in LABELS:
            spec, why = self.model_for_label(requested)
            spec, tool_why = self._tool_capable(spec, request)
            forced = [f"model `{requested}` forces label {requested} (classifier said {label})"]
            return Route(requested, 1.0, spec.id, forced + why + tool_why)
        reasons = decision.reasons + [f"model `{requested}` named explicitly: no routing"]
        return Route(label, decision.confidence, requested, reasons)

    def embedding_route(self, requested: str | None) -> Route:
        """The embedding model `requested` names (`auto` or none: the first in the catalog), as a Route
        for headers and metrics. 501 when none is configured, 400 for a model that is not one, else 404."""
        name = self._normalise(requested)
        embedders = [spec.id for spec in self.catalog.models if spec.embedding]
        if not embedders and (name in AUTO_NAMES or name in LABELS or self.catalog.get(name) is not None):
            raise NotSupported(
                "No embedding model is configured: add a GGUF embedding model (nomic-embed-text, bge, "
                "Qwen3-Embedding...) to the catalog with `embedding: true` (see the README's Embeddings).",
                param="model",
            )
        if name in AUTO_NAMES:
            return Route("embedding", 1.0, embedders[0], [f"the first embedding model, {embedders[0]}, answers"])
        spec = self.catalog.get(name)
        known = ", ".join(embedders) or "none configured"
        if spec is None and name not in LABELS:
            raise ModelNotFound(f"The model `{requested}` does not exist. Embedding models: {known}.", param="model")
        if spec is None or not spec.embedding:
            raise InvalidRequest(f"`{requested}` is not an embedding model. Embedding models: {known}.", param="model")
        return Route("embedding", 1.0, spec.id, [f"model `{spec.id}` named explicitly"])

    def model_for_label(self, label: str) -> tuple[ModelSpec, list[str]]:
        """The model serving `label` (or the nearest label's), with a reason when it had to borrow."""
        generators = self.generators()
        for candidate in (label, *LABEL_FALLBACKS.get(Label(label), ())):
            for spec in generators:
                if candidate not in spec.labels:
                    continue
                if label == Label.fim and self.capabilities(spec).fim is False:
                    continue
                why = [] if candidate == label else [f"no model serves {label}; {spec.id} (serves {candidate}) answers"]
                return spec, why
        if label == Label.fim:
            # Any model we know can do FIM is better than a 501, and the reasons say so.
            for spec in generators:
                if self.capabilities(spec).fim:
                    return spec, [f"no model serves fim; {spec.id} is FIM-capable and answers"]
            raise FimNotSupported("No FIM-capable model is configured: add a model with the `fim` label.", param="model")
        if generators:
            # Any model can chat or complete text: a one-model setup answers everything, and says so.
            spec = generators[0]
            return spec, [f"no model serves {label} or a nearby label; {spec.id} answers"]
        raise ModelNotFound(f"No model is configured for label {label}.", param="model")

    def _tool_capable(self, spec: ModelSpec, request: Request) -> tuple[ModelSpec, list[str]]:
        """A request that may call tools goes to a model whose template renders them: the label's, else
        the first catalog model that can (unknown counts as able: an upstream decides for itself)."""
        if not request.tools or request.tool_choice.mode == "none" or self.capabilities(spec).tools is not False:
            return spec, []
        for other in self.generators():
            if self.capabilities(other).tools:
                return other, [f"{spec.id} cannot call tools (its template renders none); {other.id} can and answers"]
        raise UnsupportedParameter(
            "This request carries `tools`, but no configured model's chat template renders tools. Add one that "
            "does (Qwen2.5-Coder, Llama 3.1+, Mistral) or set `chat_template` for a model in the catalog.",
            param="tools",
        )

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """What `spec` can do as far as known: the pool's word (a loaded model's own), else the catalog's."""
        return self.pool.capabilities(spec.id) if self.pool is not None else declared(spec)

    def generators(self) -> list[ModelSpec]:
        """The catalog models that generate text, in catalog order (embedding models never do)."""
        return [spec for spec in self.catalog.models if not spec.embedding]

    def model_ids(self) -> list[str]:
        return [spec.id for spec in self.catalog.models]

    def _normalise(self, requested: str | None) -> str:
        """Blank means auto; drop Ollama's implicit `:latest` tag when the bare name is known. No other
        rewriting: `tiny-qwen\\n` is not `tiny-qwen` (an exact id or a 404, never a near match)."""
        name = requested or ""
        if not name.strip():
            return ""
        if name.endswith(":latest"):
            bare = name[: -len(":latest")]
            if bare in AUTO_NAMES or bare in LABELS or self.catalog.get(bare) is not None:
                return bare
        return name

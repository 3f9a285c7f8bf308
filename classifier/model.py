"""The text model: a scikit-learn Pipeline (TF-IDF over features.analyze -> LogisticRegression)
deciding "code work or not" for the current turn, persisted with skops and loaded only against
an explicit trusted-types list (never pickle).

The fitted vocabulary is stored as one joined string rather than a dict of ~90k entries, which
skops would persist node by node (seconds to load, megabytes of schema); it is rebuilt on load.
Scoring one request uses the fitted arrays directly (same maths as Pipeline.predict_proba, tested
to agree) to stay well under a millisecond and to name the features that weighed most.
"""

from __future__ import annotations

import heapq
import math
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classifier.errors import ArtifactError
from classifier.features import analyze

if TYPE_CHECKING:  # scikit-learn and skops load in seconds: only when a model is built or loaded
    from sklearn.pipeline import Pipeline

ARTIFACT_FORMAT = "prompt-router-classifier/1"
DEFAULT_ARTIFACT = Path(__file__).parent / "artifact" / "classifier.skops"
CODE, OTHER = "code", "other"
_TERM_SEPARATOR = "\x1f"  # never inside a feature: analyze() splits on whitespace, which includes \x1f

# Everything the artifact may hold beyond skops' own safe defaults (builtins, numpy arrays).
TRUSTED_TYPES: tuple[str, ...] = (
    "classifier.features.analyze",
    "sklearn.pipeline.Pipeline",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.float32",
    "numpy.float64",
    "numpy.int64",
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.tuple",
)


def build_pipeline(seed: int) -> Pipeline:
    """The untrained pipeline; `seed` fixes the solver's randomness for reproducible artifacts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(analyzer=analyze, sublinear_tf=True, min_df=2, dtype=np.float64)),
            ("logreg", LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced", random_state=seed)),
        ]
    )


@dataclass(frozen=True, slots=True)
class Scored:
    """Probability that the current turn is code work, and the features that weighed most."""

    p_code: float
    top_features: list[tuple[str, float]]


class TextModel:
    """A fitted pipeline plus the flat arrays used to score one document quickly."""

    def __init__(self, pipeline: Pipeline, meta: dict | None = None) -> None:
        self.pipeline = pipeline
        self.meta = dict(meta or {})
        tfidf = pipeline.named_steps["tfidf"]
        logreg = pipeline.named_steps["logreg"]
        classes = list(logreg.classes_)
        if sorted(classes) != sorted([CODE, OTHER]):
            raise ArtifactError(f"text model classes are {classes}, expected {[CODE, OTHER]}")
        sign = 1.0 if classes[1] == CODE else -1.0
        self.vocabulary_: dict[str, int] = tfidf.vocabulary_
        self.idf_: list[float] = tfidf.idf_.tolist()
        self.coef_: list[float] = (sign * logreg.coef_[0]).tolist()
        self.idf_coef_: list[float] = (tfidf.idf_ * sign * logreg.coef_[0]).tolist()
        self.intercept_: float = float(sign * logreg.intercept_[0])
        self.terms_: list[str] = [""] * len(self.vocabulary_)
        for term, index in self.vocabulary_.items():
            self.terms_[index] = term

    def score(self, document: str, top: int = 3) -> Scored:
        """P(code work) for one composed document: sublinear TF x IDF, L2-normalised, logistic.

        Plain Python over the ~200 features a request has beats numpy's per-call overhead here.
        """
        get, idf, idf_coef, log = self.vocabulary_.get, self.idf_, self.idf_coef_, math.log
        dot = squares = 0.0
        contributions: list[tuple[float, int]] = []
        for feature, n in Counter(analyze(document)).items():
            index = get(feature)
            if index is None:
                continue
            tf = 1.0 if n == 1 else 1.0 + log(n)
            weight = tf * idf[index]
            squares += weight * weight
            contribution = tf * idf_coef[index]
            dot += contribution
            contributions.append((contribution, index))
        norm = math.sqrt(squares) or 1.0
        z = self.intercept_ + dot / norm
        p_code = 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0
        if p_code >= 0.5:
            best = [(c, i) for c, i in heapq.nlargest(top, contributions) if c > 0]
        else:
            best = [(c, i) for c, i in heapq.nsmallest(top, contributions) if c < 0]
        return Scored(p_code, [(self.terms_[i], c / norm) for c, i in best])

    def save(self, path: Path) -> None:
        """Persist with skops; the vocabulary travels as one joined string (see module doc)."""
        import skops.io as sio

        tfidf = self.pipeline.named_steps["tfidf"]
        vocabulary = tfidf.vocabulary_
        terms = self.terms_
        if any(_TERM_SEPARATOR in t for t in terms):
            raise ValueError("a feature holds the vocabulary separator; analyze() must split on whitespace")
        del tfidf.vocabulary_
        if hasattr(tfidf, "stop_words_"):
            del tfidf.stop_words_
        try:
            payload = {"format": ARTIFACT_FORMAT, "pipeline": self.pipeline, "terms": _TERM_SEPARATOR.join(terms), "meta": self.meta}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            sio.dump(payload, tmp, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
            tmp.replace(path)
        finally:
            tfidf.vocabulary_ = vocabulary

    @classmethod
    def load(cls, path: Path) -> TextModel:
        """Load against TRUSTED_TYPES; anything else (missing, corrupt, untrusted) is an ArtifactError."""
        import skops.io as sio
        from sklearn.pipeline import Pipeline

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"classifier artifact not found at {path}; rebuild it with `route train`")
        try:
            untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
        except Exception as exc:  # a zip/JSON that skops cannot even read
            raise ArtifactError(f"classifier artifact {path} is unreadable ({exc.__class__.__name__}: {exc})") from exc
        if untrusted:
            raise ArtifactError(f"classifier artifact {path} holds untrusted types, refusing to load: {', '.join(untrusted)}")
        try:
            payload = sio.load(path, trusted=list(TRUSTED_TYPES))
        except Exception as exc:
            raise ArtifactError(f"classifier artifact {path} failed to load ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"classifier artifact {path} is not a {ARTIFACT_FORMAT} file")
        pipeline = payload.get("pipeline")
        if not isinstance(pipeline, Pipeline) or not isinstance(payload.get("terms"), str):
            raise ArtifactError(f"classifier artifact {path} lacks its pipeline or vocabulary")
        terms = payload["terms"].split(_TERM_SEPARATOR)
        pipeline.named_steps["tfidf"].vocabulary_ = {t: i for i, t in enumerate(terms)}
        try:
            return cls(pipeline, payload.get("meta"))
        except (KeyError, AttributeError, IndexError) as exc:
            raise ArtifactError(f"classifier artifact {path} is inconsistent: {exc}") from exc

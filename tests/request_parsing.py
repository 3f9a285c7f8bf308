"""Raw test bodies as the server reads them: through the dialect adapter of their endpoint."""

from __future__ import annotations

from classifier import Classifier, Decision
from classifier.request_view import RequestView, read_request
from router.dialects.endpoints import parse_request


def classify(clf: Classifier, endpoint: str, body: object) -> Decision:
    return clf.classify(parse_request(endpoint, body))


def view_of(endpoint: str, body: object) -> RequestView:
    return read_request(parse_request(endpoint, body))

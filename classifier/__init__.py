"""Prompt classifier: decides code_edit / fim / chat / instruct for one request.

Shape rules (endpoint, FIM fields and tokens, raw code, turns) decide first; a small scikit-learn
text model decides "code work or not" for the rest. See DESIGN.md for the label contract.
"""

from classifier.classify import Classifier
from classifier.decision import Decision
from classifier.errors import ArtifactError, InvalidRequestShape
from models.labels import Label

__all__ = ["ArtifactError", "Classifier", "Decision", "InvalidRequestShape", "Label"]

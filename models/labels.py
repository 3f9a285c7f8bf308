"""The four routing labels: the contract between the classifier, the catalog and the router (their one owner)."""

from __future__ import annotations

from enum import Enum


class Label(str, Enum):
    """What a request is, as defined in DESIGN.md (`code_edit`, `fim`, `chat`, `instruct`)."""

    code_edit = "code_edit"
    fim = "fim"
    chat = "chat"
    instruct = "instruct"

    def __str__(self) -> str:  # so f-strings and rich print "chat", not "Label.chat"
        return self.value


LABELS: tuple[Label, ...] = tuple(Label)

"""Shape rules: what the request's form alone decides (exact, nearly free), before any text model.

`shape_decision` returns a Decision when the form settles the label (FIM fields, FIM tokens, raw
code), else None; `conversation_label` turns the text model's code-or-not into a label.
"""

from __future__ import annotations

from classifier.code_shape import looks_like_code
from classifier.decision import Decision
from classifier.fim_tokens import find_fim_family, find_hole_marker
from models.labels import Label
from classifier.request_view import RequestView


def shape_decision(view: RequestView) -> Decision | None:
    """The label the request's shape settles, with the rule that fired, or None."""
    if view.infill:
        return Decision(Label.fim, 1.0, ["shape: /infill is fill-in-the-middle (input_prefix/input_suffix)"])
    if view.suffix_field:
        return Decision(Label.fim, 1.0, [f"shape: {view.endpoint} carries `{view.suffix_field}`: prefix + suffix infill"])
    family = find_fim_family(view.scan)
    if family:
        return Decision(Label.fim, 1.0, [f"shape: prompt holds {family} FIM tokens"])
    marker = find_hole_marker(view.scan)
    if marker:
        return Decision(Label.fim, 0.95, [f"shape: prompt holds the hole marker {marker}: chat-based fill-in-the-middle"])
    if view.side_task:
        label = Label.chat if view.prior_assistant else Label.instruct
        return Decision(label, 0.9, [f"shape: an agent's side request ({view.side_task!r}), not code work whatever it quotes"])
    if view.raw_prompt:
        if view.empty_prompt:
            return Decision(Label.instruct, 0.5, ["shape: empty prompt (a load/unload request): nothing to classify"])
        if not view.prior_assistant and looks_like_code(view.scan):
            return Decision(Label.fim, 0.95, [f"shape: raw {view.endpoint} prompt is source code: code completion"])
    return None


def conversation_label(view: RequestView, code_work: bool) -> tuple[Label, str]:
    """code work -> code_edit; otherwise chat when an earlier assistant turn exists, else instruct."""
    if code_work:
        return Label.code_edit, "text: current turn is code work"
    if view.prior_assistant or view.many_messages:
        return Label.chat, "shape: earlier assistant turn exists and the current turn is not code work"
    return Label.instruct, "shape: single turn, not code work"

"""A bounded scan of raw prompts for any model family's FIM tokens (the tokens are models.fim's)."""

from __future__ import annotations

from models.fim import FAMILIES

# family -> (markers, how many distinct ones make a FIM prompt): models.fim owns the spellings.
FIM_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    family.name: (family.markers, family.markers_needed) for family in FAMILIES.values()
}

# Hole markers used by chat-based autocomplete (e.g. Continue's hole filler): FIM through a chat model.
HOLE_MARKERS: tuple[str, ...] = ("{{FILL_HERE}}", "<FILL_HERE>", "{{HOLE}}", "<|fim_hole|>")


def find_fim_family(window: str) -> str | None:
    """The first family whose FIM tokens occur in `window` (an already bounded slice), or None."""
    if "<" not in window and "[" not in window:
        return None
    for family, (tokens, need) in FIM_FAMILIES.items():
        hits = 0
        for token in tokens:
            if token in window:
                hits += 1
                if hits >= need:
                    return family
    return None


def find_hole_marker(window: str) -> str | None:
    for marker in HOLE_MARKERS:
        if marker in window:
            return marker
    return None

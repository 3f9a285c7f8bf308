"""Fill-in-the-middle done right: each model family's FIM tokens, prompt layout and stop tokens.

llama-cpp-python 0.3.x's `suffix` path sends token id 0 where the FIM tokens belong, so the
project never uses it. Instead the backend asks this module (pure Python, no llama.cpp) to:
detect a model's FIM family from its vocabulary, lay out prefix/suffix/repo context the way
that family was trained (PSM or SPM), and rewrite a client's pre-templated FIM prompt written
for ANY family into the target model's own.

A prompt is returned twice, as the same thing: `pieces` (text runs and control tokens named by
their vocabulary spelling, which the llama.cpp backend turns into token ids without ever
parsing user text for special tokens) and `text` (one string, for OpenAI-compatible upstreams).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from models.request import FimFile
from models.errors import FimNotSupported

Order = Literal["psm", "spm"]
Role = Literal["fixed", "prefix", "suffix", "extra"]


@dataclass(frozen=True)
class FimFamily:
    """How one family spells its FIM tokens (every known vocabulary spelling, canonical first)."""

    name: str
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    middle: tuple[str, ...] = ()
    repo: tuple[str, ...] = ()
    file_sep: tuple[str, ...] = ()
    stops: tuple[str, ...] = ()
    order: Order = "psm"
    uses_middle: bool = True  # Codestral has [MIDDLE] in its vocabulary but is prompted SPM without it
    # Families that share FIM tokens (Qwen, CodeGemma) are told apart by another token's presence.
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    # What marks a raw prompt as written for this family (the classifier's shape rule): spellings
    # from the ones above or its pad token. Tokens that also occur in ordinary text (`<PRE>` is an
    # HTML tag, `[SUFFIX]` a bracketed word) need `markers_needed` distinct ones.
    markers: tuple[str, ...] = ()
    markers_needed: int = 1
    pad: tuple[str, ...] = ()

    def fits(self, has: Callable[[str], bool]) -> bool:
        return all(has(t) for t in self.requires) and not any(has(t) for t in self.excludes)


# Detection: the first family whose prefix and suffix tokens a vocabulary holds (and that `fits`).
FAMILIES: dict[str, FimFamily] = {
    f.name: f
    for f in (
        FimFamily(
            "codegemma",
            prefix=("<|fim_prefix|>",),
            suffix=("<|fim_suffix|>",),
            middle=("<|fim_middle|>",),
            file_sep=("<|file_separator|>",),
            stops=("<|file_separator|>", "<end_of_turn>", "<eos>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
            requires=("<|file_separator|>",),
            markers=("<|file_separator|>",),
        ),
        FimFamily(
            "qwen",
            prefix=("<|fim_prefix|>",),
            suffix=("<|fim_suffix|>",),
            middle=("<|fim_middle|>",),
            repo=("<|repo_name|>",),
            file_sep=("<|file_sep|>",),
            stops=(
                "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>",
            ),
            excludes=("<|file_separator|>",),
            pad=("<|fim_pad|>",),
            markers=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
        ),
        FimFamily(
            "starcoder",
            prefix=("<fim_prefix>", "<fim-prefix>"),
            suffix=("<fim_suffix>", "<fim-suffix>"),
            middle=("<fim_middle>", "<fim-middle>"),
            repo=("<repo_name>", "<reponame>"),
            file_sep=("<file_sep>", "<filename>"),
            stops=(
                "<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>",
                "<repo_name>", "<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>",
            ),
            pad=("<fim_pad>", "<fim-pad>"),
            markers=("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<fim-prefix>", "<fim-suffix>",
                     "<fim-middle>"),
        ),
        FimFamily(
            "deepseek",
            # Its vocabulary spells them with full-width bars; clients also write them with ASCII ones.
            prefix=("<｜fim▁begin｜>", "<|fim▁begin|>"),
            suffix=("<｜fim▁hole｜>", "<|fim▁hole|>"),
            middle=("<｜fim▁end｜>", "<|fim▁end|>"),
            stops=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
            markers=("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),
        ),
        FimFamily(
            "codellama",
            prefix=("<PRE>", "▁<PRE>"),
            suffix=("<SUF>", "▁<SUF>"),
            middle=("<MID>", "▁<MID>"),
            stops=("<EOT>", "▁<EOT>", "</s>", "<PRE>", "▁<PRE>", "<SUF>", "▁<SUF>", "<MID>", "▁<MID>"),
            markers=("<PRE>", "<SUF>", "<MID>"),
            markers_needed=2,
        ),
        FimFamily(
            "codestral",
            prefix=("[PREFIX]",),
            suffix=("[SUFFIX]",),
            middle=("[MIDDLE]",),
            stops=("[PREFIX]", "[SUFFIX]", "[MIDDLE]", "</s>"),
            markers=("[SUFFIX]", "[PREFIX]"),
            markers_needed=2,
            order="spm",
            uses_middle=False,
        ),
        FimFamily(
            "seedcoder",
            prefix=("<[fim-prefix]>",),
            suffix=("<[fim-suffix]>",),
            middle=("<[fim-middle]>",),
            stops=("<[end▁of▁sentence]>", "<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>"),
            markers=("<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>"),
        ),
        FimFamily(
            "codegeex",
            prefix=("<|code_prefix|>",),
            suffix=("<|code_suffix|>",),
            middle=("<|code_middle|>",),
            stops=("<|endoftext|>", "<|user|>", "<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),
            markers=("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),
        ),
    )
}

# Aliases users may write in a catalog's `fim_family` override.
FAMILY_ALIASES = {
    "qwen2.5-coder": "qwen", "qwen-coder": "qwen", "starcoder2": "starcoder", "santacoder": "starcoder",
    "stable-code": "starcoder", "deepseek-coder": "deepseek", "mistral": "codestral", "granite": "codegemma",
    "seed-coder": "seedcoder",
}

# llama.cpp's /infill names the repo and the current file with placeholders; so do we.
DEFAULT_REPO_NAME = "myproject"
CURRENT_FILE = "filename"


@dataclass(frozen=True)
class Piece:
    """A run of prompt text, or one control token named by its vocabulary spelling."""

    text: str
    special: bool = False
    role: Role = "fixed"  # which pieces the backend may trim when the prompt does not fit


@dataclass(frozen=True)
class FimTokens:
    """The FIM tokens one model has (spelled as in its vocabulary), and those that end a middle."""

    family: str
    prefix: str
    suffix: str
    middle: str | None
    repo: str | None = None
    file_sep: str | None = None
    stops: tuple[str, ...] = ()

    @property
    def order(self) -> Order:
        return FAMILIES[self.family].order


@dataclass(frozen=True)
class FimPrompt:
    """A FIM prompt laid out for one family: token pieces (llama.cpp) and the same as one string."""

    family: str
    pieces: tuple[Piece, ...]
    text: str
    stops: tuple[str, ...]


@dataclass(frozen=True)
class ParsedFim:
    """What a client's pre-templated FIM prompt asked for, whichever family it was written for."""

    family: str
    prefix: str
    suffix: str
    extra: tuple[FimFile, ...] = ()
    repo_name: str | None = None


def canonical_family(name: str) -> str:
    """A family name from a catalog override, normalised; unknown names are a clear error."""
    key = name.strip().lower()
    key = FAMILY_ALIASES.get(key, key)
    if key not in FAMILIES:
        raise ValueError(f"unknown FIM family {name!r}; known: {', '.join(FAMILIES)}")
    return key


def _first_present(spellings: Iterable[str], has: Callable[[str], bool]) -> str | None:
    for s in spellings:
        if has(s):
            return s
    return None


def detect_fim(vocab: Callable[[str], bool] | Collection[str], override: str | None = None) -> FimTokens | None:
    """Which FIM family a vocabulary belongs to, from its token strings (None: it has no FIM tokens).

    `vocab` answers "is this exact string one token of the model?" (a set of token strings or a
    predicate). With `override`, that family is used even where the vocabulary spells nothing
    (its canonical spellings are then used, e.g. for an upstream whose vocabulary we cannot see).
    """
    has: Callable[[str], bool] = vocab if callable(vocab) else vocab.__contains__
    families = [FAMILIES[canonical_family(override)]] if override else list(FAMILIES.values())
    for fam in families:
        pre = _first_present(fam.prefix, has)
        suf = _first_present(fam.suffix, has)
        if not override and (pre is None or suf is None):
            continue
        if not override and not fam.fits(has):
            continue
        mid = _first_present(fam.middle, has)
        stops = tuple(s for s in fam.stops if has(s))
        if override:
            pre, suf = pre or fam.prefix[0], suf or fam.suffix[0]
            mid = mid or (fam.middle[0] if fam.middle else None)
            stops = stops or fam.stops
        return FimTokens(
            family=fam.name,
            prefix=pre,
            suffix=suf,
            middle=mid if fam.uses_middle else None,
            repo=_first_present(fam.repo, has) or (fam.repo[0] if override and fam.repo else None),
            file_sep=_first_present(fam.file_sep, has) or (fam.file_sep[0] if override and fam.file_sep else None),
            stops=stops,
        )
    return None


def family_tokens(family: str) -> FimTokens:
    """A family's canonical tokens, for a model whose vocabulary we cannot read (an upstream)."""
    tokens = detect_fim(lambda _s: False, override=family)
    assert tokens is not None
    return tokens


def _display(token: str) -> str:
    """A token as it appears in a text prompt (SentencePiece writes a leading space as `▁`)."""
    return token[1:] if token.startswith("▁<") else token


def build_fim_prompt(
    tokens: FimTokens | None,
    prefix: str,
    suffix: str,
    extra: Iterable[FimFile] = (),
    *,
    repo_name: str | None = None,
    model_id: str = "this model",
) -> FimPrompt:
    """Lay out prefix, suffix and repo context the way `tokens.family` was trained."""
    if tokens is None:
        raise FimNotSupported(
            f"Model {model_id!r} has no fill-in-the-middle tokens in its vocabulary, so it cannot do FIM. "
            "Use a coder model with FIM support (e.g. Qwen2.5-Coder, StarCoder2, DeepSeek-Coder, CodeLlama) "
            "or set `fim_family` in the catalog if its tokens are spelled unusually."
        )
    extra = tuple(extra)
    pieces: list[Piece] = []

    def special(tok: str, role: Role = "fixed") -> None:
        pieces.append(Piece(tok, special=True, role=role))

    def text(s: str, role: Role = "fixed") -> None:
        if s:
            pieces.append(Piece(s, role=role))

    family = tokens.family
    if family == "codestral":
        # Mistral's FIM: [SUFFIX]suffix[PREFIX]prefix, repo context as `+++++ path` blocks before the prefix.
        special(tokens.suffix)
        text(suffix, "suffix")
        special(tokens.prefix)
        if extra:
            blocks = "\n\n".join(f"+++++ {f.filename or 'context'}\n{f.text}" for f in extra)
            text(f"{blocks}\n\n+++++ {CURRENT_FILE}\n", "extra")
        text(prefix, "prefix")
    else:
        if extra and tokens.file_sep:
            # Repo-level layout (Qwen2.5-Coder, StarCoder2): repo name, then one block per file.
            newline_after_sep = family != "starcoder"
            if tokens.repo:
                special(tokens.repo, "extra")
                text((repo_name or DEFAULT_REPO_NAME) + ("\n" if newline_after_sep else ""), "extra")
            for f in extra:
                special(tokens.file_sep, "extra")
                body = f.text if f.text.endswith("\n") else f.text + "\n"
                text(f"{f.filename or 'context'}\n{body}", "extra")
            special(tokens.file_sep, "extra")
            if newline_after_sep:
                text(CURRENT_FILE + "\n", "extra")
        elif extra:
            # No file separator in this family: give the context as a plain leading snippet.
            context = "".join(f"{f.text}\n" for f in extra)
            text(context, "extra")
        if tokens.order == "spm":
            special(tokens.prefix)
            special(tokens.suffix)
            text(suffix, "suffix")
            if tokens.middle:
                special(tokens.middle)
            text(prefix, "prefix")
        else:
            special(tokens.prefix)
            text(prefix, "prefix")
            special(tokens.suffix)
            text(suffix, "suffix")
            if tokens.middle:
                special(tokens.middle)

    if family == "codellama":
        # Meta's layout `<PRE> {prefix} <SUF>{suffix} <MID>`: SentencePiece adds the spaces at the
        # token level; the string form spells them out.
        rendered = f"<PRE> {prefix} <SUF>{suffix} <MID>"
        ctx = "".join(p.text for p in pieces if p.role == "extra")
        rendered = ctx + rendered
    else:
        rendered = "".join(_display(p.text) if p.special else p.text for p in pieces)
    return FimPrompt(family=family, pieces=tuple(pieces), text=rendered, stops=tokens.stops)


# ---- reading a client's pre-templated FIM prompt ------------------------------------------

def _spellings(fam: FimFamily, attr: str) -> tuple[str, ...]:
    # Longest first, so `▁<PRE>` is found before `<PRE>`.
    return tuple(sorted(getattr(fam, attr), key=len, reverse=True))


def _find(prompt: str, spellings: tuple[str, ...], start: int = 0) -> tuple[int, int]:
    """(start, end) of the first occurrence of any spelling, or (-1, -1)."""
    best = (-1, -1)
    for s in spellings:
        i = prompt.find(s, start)
        if i >= 0 and (best[0] < 0 or i < best[0]):
            best = (i, i + len(s))
    return best


def parse_fim_prompt(prompt: str) -> ParsedFim | None:
    """Read a prompt that already holds some family's FIM tokens (None: it holds none).

    Whatever follows the middle token (or, in SPM layouts, the prefix) is what the model
    should continue, so it is part of the prefix.
    """
    for fam in FAMILIES.values():
        p0, p1 = _find(prompt, _spellings(fam, "prefix"))
        s0, s1 = _find(prompt, _spellings(fam, "suffix"))
        if p0 < 0 or s0 < 0 or not fam.fits(prompt.__contains__):
            continue
        m0, m1 = _find(prompt, _spellings(fam, "middle")) if fam.middle else (-1, -1)
        head = prompt[: min(p0, s0)]
        if p0 < s0:  # PSM: PRE prefix SUF suffix MID [started middle]
            prefix = prompt[p1:s0]
            if m0 > s0:
                suffix, after = prompt[s1:m0], prompt[m1:]
            else:
                suffix, after = prompt[s1:], ""
            if fam.name == "codellama":
                prefix = prefix[1:] if prefix.startswith(" ") else prefix
                prefix = prefix[:-1] if prefix.endswith(" ") else prefix
                suffix = suffix[:-1] if suffix.endswith(" ") else suffix
            prefix = prefix + after
        else:  # SPM: SUF suffix PRE prefix  /  PRE SUF suffix MID prefix
            if m0 > s0:
                suffix, prefix = prompt[s1:m0], prompt[m1:]
            else:
                suffix, prefix = prompt[s1:p0], prompt[p1:]
        extra, repo, prefix = _parse_context(fam, head, prefix)
        return ParsedFim(fam.name, prefix, suffix, extra, repo)
    return None


def _parse_context(fam: FimFamily, head: str, prefix: str) -> tuple[tuple[FimFile, ...], str | None, str]:
    """Repo-level context written before the FIM part (file_sep blocks) or, for Codestral, `+++++` blocks."""
    extra: list[FimFile] = []
    repo: str | None = None
    if fam.name == "codestral":
        if prefix.startswith("+++++ "):
            blocks = re.split(r"(?:^|\n\n)\+\+\+\+\+ ", prefix)[1:]
            for block in blocks[:-1]:
                path, _, code = block.partition("\n")
                extra.append(FimFile(text=code, filename=path or None))
            _, _, prefix = blocks[-1].partition("\n")
        return tuple(extra), None, prefix
    head = head.replace("<s>", "")
    for r in _spellings(fam, "repo"):
        if head.startswith(r):
            rest = head[len(r):]
            sep_at = min([i for i in (rest.find(s) for s in fam.file_sep) if i >= 0], default=len(rest))
            repo = rest[:sep_at].strip("\n") or None
            head = rest[sep_at:]
            break
    for sep in _spellings(fam, "file_sep"):
        if sep in head:
            blocks = head.split(sep)[1:]
            for i, block in enumerate(blocks):
                path, _, code = block.partition("\n")
                if i == len(blocks) - 1 and not code.strip():
                    continue  # the current file's header right before the FIM tokens
                if code.endswith("\n"):
                    code = code[:-1]
                extra.append(FimFile(text=code, filename=path or None))
            break
    return tuple(extra), repo, prefix


def holds_fim_tokens(prompt: str) -> bool:
    """Does a raw prompt already carry some family's FIM prefix and suffix tokens?"""
    return parse_fim_prompt(prompt) is not None


def translate_fim_prompt(prompt: str, target: FimTokens | None, *, model_id: str = "this model") -> FimPrompt | None:
    """Rewrite a client's FIM prompt written for any family into the target model's own.

    None when the prompt holds no FIM tokens (it is then an ordinary completion). A prompt
    already in the target's family is returned unchanged as text (the client knew the format).
    """
    parsed = parse_fim_prompt(prompt)
    if parsed is None:
        return None
    if target is None:
        raise FimNotSupported(
            f"The prompt is a {parsed.family} fill-in-the-middle prompt, but model {model_id!r} has no FIM "
            "tokens to rewrite it into. Route it to a FIM-capable coder model."
        )
    if parsed.family == target.family:
        return FimPrompt(family=target.family, pieces=(), text=prompt, stops=target.stops)
    return build_fim_prompt(target, parsed.prefix, parsed.suffix, parsed.extra, repo_name=parsed.repo_name)


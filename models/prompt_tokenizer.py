"""Prompt tokenization for the in-process backend: llama.cpp's tokens, with the plain text cached.

llama.cpp tokenizes a prompt by cutting it at special-token spellings (the longest spelling
first) and then running BPE on each piece of plain text on its own. On Qwen's vocabulary every
piece costs about 1 ms of fixed work (its pre-tokenizer regex is built per piece) before the
first token. Chat history, system prompts and an editor's repo context come back request after
request, so each plain piece's tokens are cached: the same tokens, computed once. This is done
only for byte-level BPE vocabularies without strip rules or an appended end token, where that
cut is all there is; other vocabularies are tokenized whole, as llama.cpp does.
"""

from __future__ import annotations

import re
from typing import Any

import llama_cpp
from cachetools import LRUCache

# Tokens kept for cached pieces of plain text (about 4 bytes each as Python lists hold them).
CACHED_TOKENS = 262_144
# Checking a prompt for thousands of special spellings would cost more than caching saves.
MAX_SPECIAL_SPELLINGS = 1024
# Longest run of non-space (or of space) characters handed to llama.cpp's tokenizer in one piece.
TOKENIZER_RUN_LIMIT = 4096
_LONG_RUN = re.compile(r"\S{%d,}|\s{%d,}" % (TOKENIZER_RUN_LIMIT, TOKENIZER_RUN_LIMIT))

_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
_STRIPS = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP


class PromptTokenizer:
    """Tokenizes text for one loaded model; not thread-safe (the backend's one worker uses it)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.bos: int = llm.token_bos()
        self._vocab_adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)) and self.bos >= 0
        self._specials = _cacheable_specials(llm._model.vocab)  # (spelling, id), longest first
        self._spellings = tuple(s for s, _ in self._specials) if self._specials is not None else ()
        self._cache: LRUCache[str, list[int]] = LRUCache(maxsize=CACHED_TOKENS, getsizeof=lambda ids: max(1, len(ids)))

    @property
    def caches(self) -> bool:
        return self._specials is not None

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """llama.cpp's tokens for `text` (special spellings read as special tokens if `special`)."""
        if self._specials is None:
            return self._whole(text, special, add_bos=add_bos)
        ids = [self.bos] if add_bos and self._vocab_adds_bos else []  # as llama.cpp's BPE adds it
        if not text:
            return ids
        if not special:
            if any(s in text for s in self._spellings):  # llama.cpp still reads some of these
                return ids + self._whole(text, special)
            return ids + self._plain(text)
        for part in self._cut(text):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids += self._plain(part)
        return ids

    def _cut(self, text: str) -> list[str | int]:
        """`text` as plain pieces and special-token ids, cut as llama.cpp cuts it."""
        parts: list[str | int] = [text]
        for spelling, tid in self._specials or ():
            if not any(isinstance(p, str) and spelling in p for p in parts):
                continue
            out: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or spelling not in part:
                    out.append(part)
                    continue
                for i, piece in enumerate(part.split(spelling)):
                    if i:
                        out.append(tid)
                    if piece:
                        out.append(piece)
            parts = out
        return parts

    def _plain(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._whole(text, special=False)
            self._cache[text] = ids
        return ids  # callers concatenate, never mutate

    def _whole(self, text: str, special: bool, add_bos: bool = False) -> list[int]:
        """llama.cpp's own call (`add_bos` also appends an end token where the vocabulary asks)."""
        if not text:
            return [self.bos] if add_bos and self.bos >= 0 else []
        ids: list[int] = []
        for i, piece in enumerate(tokenizer_pieces(text)):
            ids += self._llm.tokenize(piece.encode("utf-8"), add_bos=add_bos and i == 0, special=special)
        return ids


def _cacheable_specials(vocab: Any) -> list[tuple[str, int]] | None:
    """The vocabulary's special spellings, longest first, or None when caching pieces would not
    give llama.cpp's exact tokens (not byte-level BPE, strip rules, an appended end token)."""
    if llama_cpp.llama_vocab_type(vocab) != llama_cpp.LLAMA_VOCAB_TYPE_BPE or llama_cpp.llama_vocab_get_add_eos(vocab):
        return None
    specials: list[tuple[str, int]] = []
    for tok in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, tok)
        if not attr & _SPECIAL:
            continue
        if attr & _STRIPS:
            return None
        spelling = (llama_cpp.llama_vocab_get_text(vocab, tok) or b"").decode("utf-8", "replace")
        if spelling:
            specials.append((spelling, tok))
    if len(specials) > MAX_SPECIAL_SPELLINGS:
        return None
    specials.sort(key=lambda st: len(st[0].encode("utf-8")), reverse=True)
    return specials


def tokenizer_pieces(text: str) -> list[str]:
    """`text` cut inside any run longer than TOKENIZER_RUN_LIMIT; other text is left whole.

    Why: llama.cpp's pre-tokenizer crashes the process (SIGSEGV; measured with Qwen2.5-Coder at
    ~25k repeated letters or spaces in one prompt), so one request could take the router down.
    Ordinary prompts have no such run and are tokenized exactly as before.
    """
    cuts = [pos for m in _LONG_RUN.finditer(text)
            for pos in range(m.start() + TOKENIZER_RUN_LIMIT, m.end(), TOKENIZER_RUN_LIMIT)]
    if not cuts:
        return [text]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]

"""Why a GGUF file will not load: read its header ourselves, because llama.cpp only says "failed".

Used after a load failure (never on the happy path), so a missing, empty, foreign or truncated
file gets a message that names the cause and the fix instead of a bare "failed to load".
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
# ggml tensor types: (elements per block, bytes per block), as defined by ggml.h.
GGML_BLOCK = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUFError(ValueError):
    """The file is not a complete GGUF; the message says what is wrong."""


def _read(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) < size:
        raise GGUFError("the file ends inside its header (truncated download?)")
    return struct.unpack("<" + fmt, data)


def _string(f: BinaryIO) -> str:
    (n,) = _read(f, "Q")
    data = f.read(n)
    if len(data) < n:
        raise GGUFError("the file ends inside its header (truncated download?)")
    return data.decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, vtype: int) -> object:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])[0]
    if vtype == 8:
        return _string(f)
    if vtype == 9:
        itype, n = _read(f, "IQ")
        if itype in _SCALARS:
            size = struct.calcsize("<" + _SCALARS[itype]) * n
            f.seek(size, 1)
        else:
            for _ in range(n):
                _skip_value(f, itype)
        return None
    raise GGUFError(f"unknown metadata value type {vtype} (corrupt header)")


def check_gguf(path: Path) -> None:
    """Raise GGUFError naming what is wrong with `path`; return quietly if it looks complete."""
    path = Path(path)
    if not path.exists():
        raise GGUFError("the file does not exist")
    if not path.is_file():
        raise GGUFError("it is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise GGUFError("the file is empty")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError("it is not a GGUF file (wrong magic bytes); convert the model to GGUF first")
        (version,) = _read(f, "I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = _read(f, "QQ")
        alignment = 32
        for _ in range(n_kv):
            key = _string(f)
            (vtype,) = _read(f, "I")
            value = _skip_value(f, vtype)
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
        end = 0
        for _ in range(n_tensors):
            _string(f)
            (n_dims,) = _read(f, "I")
            dims = _read(f, "Q" * n_dims)
            ttype, offset = _read(f, "IQ")
            n_el = 1
            for d in dims:
                n_el *= d
            block = GGML_BLOCK.get(ttype)
            nbytes = (n_el // block[0]) * block[1] if block else 0
            end = max(end, offset + nbytes)
        data_start = (f.tell() + alignment - 1) // alignment * alignment
    if data_start + end > size:
        raise GGUFError(
            f"the file is truncated: its tensors need {data_start + end:,} bytes but it has {size:,} "
            "(an interrupted download? fetch it again)"
        )


def diagnose_gguf(path: Path) -> str | None:
    """The reason `path` cannot load, or None if its structure looks fine."""
    try:
        check_gguf(path)
    except GGUFError as exc:
        return str(exc)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None


def read_metadata(path: Path, wanted: set[str]) -> dict[str, object]:
    """The wanted scalar metadata values, reading only as far as needed (architecture keys come
    before the large tokenizer arrays in converted files, so this is cheap)."""
    found: dict[str, object] = {}
    with Path(path).open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError("it is not a GGUF file (wrong magic bytes)")
        _read(f, "I")
        _, n_kv = _read(f, "QQ")
        for _ in range(n_kv):
            key = _string(f)
            (vtype,) = _read(f, "I")
            value = _skip_value(f, vtype)
            if key in wanted or (key == "general.architecture" and isinstance(value, str)):
                found[key] = value
                if key == "general.architecture":
                    wanted = {w.replace("{arch}", str(value)) for w in wanted}
            if wanted and wanted <= found.keys():
                break
    return found


KV_KEYS = frozenset({
    "{arch}.block_count", "{arch}.embedding_length", "{arch}.attention.head_count",
    "{arch}.attention.head_count_kv", "{arch}.attention.key_length", "{arch}.attention.value_length",
})


def kv_cache_bytes(metadata: Mapping[str, object], n_ctx: int) -> int:
    """f16 K and V for every layer and position of an `n_ctx` context (0 if the metadata lacks the sizes).

    The one formula: the pool's estimate before a load and the loaded model's size both use it.
    """
    try:
        arch = metadata["general.architecture"]
        n_layer = int(metadata[f"{arch}.block_count"])
        n_embd = int(metadata[f"{arch}.embedding_length"])
        n_head = int(metadata[f"{arch}.attention.head_count"])
        n_head_kv = int(metadata.get(f"{arch}.attention.head_count_kv", n_head))
        k_len = int(metadata.get(f"{arch}.attention.key_length", n_embd // n_head))
        v_len = int(metadata.get(f"{arch}.attention.value_length", n_embd // n_head))
        return n_ctx * n_layer * n_head_kv * (k_len + v_len) * 2
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return 0


def file_kv_cache_bytes(path: Path, n_ctx: int) -> int:
    """kv_cache_bytes for a GGUF file not loaded yet, from its header alone."""
    try:
        return kv_cache_bytes(read_metadata(path, set(KV_KEYS)), n_ctx)
    except (GGUFError, OSError):
        return 0

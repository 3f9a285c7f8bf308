"""llama.cpp's `llama-server`, built from the very llama.cpp tree the pinned llama-cpp-python vendors.

The llama-cpp-python sdist (MIT) carries the whole llama.cpp tree under vendor/llama.cpp,
tools/server included, so the binary is exactly our llama.cpp commit. The pin has one owner,
pyproject.toml: the version is read from the installed package's metadata.

Layout of the cache (the user cache dir, `prompt-router/llama-server`):

    sdist/llama_cpp_python-VERSION.tar.gz    what `pip download --no-binary :all:` fetched
    src/VERSION/                             that sdist unpacked
    versions/VERSION.json                    which llama.cpp commit that version vendors
    builds/COMMIT-OPTIONS/bin/llama-server   one build per llama.cpp commit and cmake options
    builds/COMMIT-OPTIONS/build.json         what was built, how, and how long it took
    builds/COMMIT-OPTIONS/build.log          cmake's output

The commit is the one llama-cpp-python's CHANGELOG names for the version ("Update llama.cpp to
ggerganov/llama.cpp@SHA"); where it names none, the key is a sha256 of the vendored tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

PACKAGE = "llama-cpp-python"
TARGET = "llama-server"
# The GPU backends a build can add, and the cmake option each one turns on (llama.cpp's docs/build.md).
BACKEND_OPTIONS = {"cuda": "GGML_CUDA", "metal": "GGML_METAL", "vulkan": "GGML_VULKAN"}
# Always set: no libcurl (the router fetches weights itself), the server and its tools' tree,
# nothing else, and one self-contained binary (no libllama.so beside it to lose).
BASE_CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "LLAMA_CURL": "OFF",
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_COMMON": "ON",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "BUILD_SHARED_LIBS": "OFF",
}
LOG_TAIL_LINES = 40

Progress = Callable[[str], None]


class ServerBuildError(Exception):
    """llama-server cannot be built or found; the message says why and what to do."""


@dataclass(frozen=True)
class BuildOptions:
    """Which GPU backends to compile in (none: CPU only)."""

    backends: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.backends) - set(BACKEND_OPTIONS)
        if unknown:
            raise ServerBuildError(f"unknown backend(s) {sorted(unknown)}: choose from {sorted(BACKEND_OPTIONS)}")

    @property
    def key(self) -> str:
        return "+".join(sorted(self.backends)) or "cpu"

    def cmake_options(self) -> dict[str, str]:
        return {
            **BASE_CMAKE_OPTIONS,
            **{option: "ON" if name in self.backends else "OFF" for name, option in BACKEND_OPTIONS.items()},
        }


@dataclass(frozen=True)
class SourceTree:
    """An unpacked llama-cpp-python sdist: its version, its llama.cpp tree and that tree's identity."""

    version: str
    llama_cpp: Path  # vendor/llama.cpp
    commit: str | None  # the llama.cpp commit the CHANGELOG names, when it does
    tree_sha256: str

    @property
    def key(self) -> str:
        return self.commit[:12] if self.commit else f"tree-{self.tree_sha256[:12]}"


@dataclass(frozen=True)
class BuiltServer:
    path: Path
    version: str
    build_key: str  # COMMIT-OPTIONS
    cached: bool  # found already built
    seconds: float  # this call's time (download, unpack, build), or the build's when cached


def pinned_version() -> str:
    """The installed llama-cpp-python's version: pyproject.toml's pin, never a second literal."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ServerBuildError(f"{PACKAGE} is not installed in this environment ({sys.executable})") from None


def cache_dir() -> Path:
    """Where builds are kept; ROUTE_LLAMA_SERVER_CACHE overrides the user cache dir."""
    override = os.environ.get("ROUTE_LLAMA_SERVER_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("prompt-router")) / "llama-server"


def binary_name() -> str:
    return TARGET + (".exe" if sys.platform == "win32" else "")


def find_server(options: BuildOptions = BuildOptions(), *, version: str | None = None,
                cache: Path | None = None) -> Path | None:
    """The cached llama-server for this version and options, or None when it was never built.

    Raises ServerBuildError when the file is there but cannot run (not executable).
    """
    cache = cache or cache_dir()
    version = version or pinned_version()
    record = cache / "versions" / f"{version}.json"
    if not record.is_file():
        return None
    key = json.loads(record.read_text())["key"]
    path = cache / "builds" / f"{key}-{options.key}" / "bin" / binary_name()
    if not path.exists():
        return None
    if not os.access(path, os.X_OK):
        raise ServerBuildError(f"{path} is not executable: rebuild it with `route engine build-server --force`")
    return path


def build_server(options: BuildOptions = BuildOptions(), *, jobs: int | None = None, force: bool = False,
                 cache: Path | None = None, progress: Progress | None = None,
                 source: SourceTree | None = None) -> BuiltServer:
    """The llama-server for the pinned llama-cpp-python and these options, built if not cached.

    `source` builds another tree (tests); by default the pinned version's sdist is fetched and
    unpacked. Concurrent callers (two test runs, two shells) wait for one build.
    """
    cache = cache or cache_dir()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    version = source.version if source else pinned_version()
    if source is None and not force:
        found = find_server(options, version=version, cache=cache)
        if found is not None:
            return _cached(found, version, started)
    if source is None:
        source = unpack_sdist(download_sdist(version, cache, say), cache, say)
    build_key = f"{source.key}-{options.key}"
    out = cache / "builds" / build_key
    with _file_lock(cache / "builds" / f"{build_key}.lock"):
        binary = out / "bin" / binary_name()
        if binary.exists() and not force:  # built by whoever held the lock before us
            return _cached(binary, version, started)
        _compile(source, options, out, jobs or os.cpu_count() or 1, say)
    return BuiltServer(binary, version, build_key, cached=False, seconds=time.perf_counter() - started)


def _cached(path: Path, version: str, started: float) -> BuiltServer:
    manifest = path.parent.parent / "build.json"
    info = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return BuiltServer(path, version, path.parent.parent.name, cached=True,
                       seconds=float(info.get("build_seconds", time.perf_counter() - started)))


# --- the sdist ---------------------------------------------------------------------------------


def download_sdist(version: str, cache: Path, say: Progress) -> Path:
    """`pip download --no-binary :all: --no-deps llama-cpp-python==VERSION`, once per version."""
    target = cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"downloading the {PACKAGE} {version} sdist with pip")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"{PACKAGE}=={version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not found:
            raise ServerBuildError(f"`{' '.join(cmd[2:])}` failed (exit {result.returncode}):\n"
                                   + _tail(result.stdout + result.stderr))
        os.replace(found[0], target)
    return target


def unpack_sdist(sdist: Path, cache: Path, say: Progress) -> SourceTree:
    """The sdist unpacked under src/VERSION (once), and its llama.cpp commit recorded."""
    version = sdist.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    dest = cache / "src" / version
    done = dest / ".unpacked"
    if not done.is_file():
        say(f"unpacking {sdist.name}")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, **kwargs)
        (dest / top).rename(dest / "tree")
        done.write_text(sdist.name)
    tree = dest / "tree"
    llama_cpp = tree / "vendor" / "llama.cpp"
    if not (llama_cpp / "tools" / "server").is_dir():
        raise ServerBuildError(f"{sdist.name} holds no vendor/llama.cpp/tools/server: cannot build {TARGET} from it")
    source = SourceTree(version, llama_cpp, _changelog_commit(tree / "CHANGELOG.md", version), _tree_sha256(llama_cpp))
    record = cache / "versions" / f"{version}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": source.key, "llama_cpp_commit": source.commit,
                                  "tree_sha256": source.tree_sha256}, indent=2))
    return source


def _changelog_commit(changelog: Path, version: str) -> str | None:
    """The llama.cpp commit llama-cpp-python's CHANGELOG names in this version's section."""
    if not changelog.is_file():
        return None
    text = changelog.read_text(encoding="utf-8", errors="replace")
    section = re.search(rf"^## \[{re.escape(version)}\]\s*$(.*?)(?=^## \[|\Z)", text, flags=re.M | re.S)
    if section is None:
        return None
    commit = re.search(r"llama\.cpp@([0-9a-f]{40})", section.group(1))
    return commit.group(1) if commit else None


def _tree_sha256(root: Path) -> str:
    """A digest of every file's path and bytes under `root` (the .git pointer file left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".git"):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --- cmake -------------------------------------------------------------------------------------


def require_toolchain() -> tuple[str, str]:
    """(cmake, the C++ compiler), or a ServerBuildError saying which is missing and how to get it."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise ServerBuildError(
            f"cmake is not on PATH: building {TARGET} needs it (apt install cmake, brew install cmake, "
            "or pip install cmake)"
        )
    named = os.environ.get("CXX")
    compilers = [named] if named else ["c++", "g++", "clang++", "cl"]
    for name in compilers:
        found = shutil.which(name)
        if found:
            return cmake, found
    wanted = f"CXX={named} is not an executable on PATH" if named else "no C++ compiler (c++, g++, clang++) on PATH"
    raise ServerBuildError(
        f"{wanted}: building {TARGET} needs one (apt install build-essential, xcode-select --install, "
        "or the Visual Studio C++ build tools)"
    )


def cmake_commands(source: SourceTree, options: BuildOptions, build_dir: Path, jobs: int,
                   cmake: str = "cmake", cxx: str | None = None) -> list[list[str]]:
    """The configure and build commands, as run (and recorded in build.json)."""
    defines = options.cmake_options()
    if source.commit:
        defines["LLAMA_BUILD_COMMIT"] = source.commit[:7]  # no .git in the sdist: `--version` says it anyway
    if cxx:
        defines["CMAKE_CXX_COMPILER"] = cxx
    configure = [cmake, "-S", str(source.llama_cpp), "-B", str(build_dir),
                 *(f"-D{name}={value}" for name, value in defines.items())]
    build = [cmake, "--build", str(build_dir), "--target", TARGET, "--config", "Release", "-j", str(jobs)]
    return [configure, build]


def _compile(source: SourceTree, options: BuildOptions, out: Path, jobs: int, say: Progress) -> None:
    cmake, cxx = require_toolchain()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    build_dir = out / "build"
    log_path = out / "build.log"
    commands = cmake_commands(source, options, build_dir, jobs, cmake, cxx)
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        for step, cmd in zip(("configuring", "compiling"), commands):
            say(f"{step} {TARGET} ({options.key}, llama.cpp {source.key}, -j {jobs})")
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            show = say if step == "compiling" else None
            returncode = _run_logged(cmd, log, show)
            log.flush()
            if returncode != 0:
                raise ServerBuildError(
                    f"building {TARGET} failed while {step} (cmake exit {returncode}); "
                    f"full log: {log_path}\n{_tail(log_path.read_text(encoding='utf-8', errors='replace'))}"
                )
    built = next((p for p in (build_dir / "bin" / binary_name(), build_dir / "bin" / "Release" / binary_name())
                  if p.is_file()), None)
    if built is None:
        raise ServerBuildError(f"cmake finished but no {binary_name()} is under {build_dir / 'bin'}; log: {log_path}")
    (out / "bin").mkdir()
    final = out / "bin" / binary_name()
    shutil.copy2(built, final)
    seconds = time.perf_counter() - started
    (out / "build.json").write_text(json.dumps({
        "llama_cpp_python": source.version, "llama_cpp_commit": source.commit, "tree_sha256": source.tree_sha256,
        "options": options.key, "commands": commands, "build_seconds": round(seconds, 1),
    }, indent=2))
    shutil.rmtree(build_dir, ignore_errors=True)  # object files: hundreds of MB nobody reads again


def _run_logged(cmd: list[str], log, show: Progress | None) -> int:
    """Runs cmd with its output appended to `log`, cmake's "[ 42%] ..." lines shown; its exit status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if show is not None and line.startswith("["):
            show(line.rstrip("\n"))
    return proc.wait()


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

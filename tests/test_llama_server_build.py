"""`route engine build-server`'s failure paths and cache lookup, with real cmake where it runs.

The real build is exercised by tests/test_llama_server.py's fixture; these stay fast: a missing
toolchain, a tree whose cmake fails, and `server-path` on an empty or broken cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.llama_server_build import (
    BASE_CMAKE_OPTIONS, BuildOptions, ServerBuildError, SourceTree, build_server, cmake_commands, find_server,
    pinned_version, require_toolchain, unpack_sdist,
)
from router.cli import app


def test_the_version_is_the_installed_pin_and_options_map_to_ggml_flags():
    import importlib.metadata

    assert pinned_version() == importlib.metadata.version("llama-cpp-python")
    assert BuildOptions().key == "cpu"
    gpu = BuildOptions(frozenset({"vulkan", "cuda"}))
    assert gpu.key == "cuda+vulkan"
    defines = gpu.cmake_options()
    assert (defines["GGML_CUDA"], defines["GGML_VULKAN"], defines["GGML_METAL"]) == ("ON", "ON", "OFF")
    assert defines["LLAMA_CURL"] == "OFF" and defines["LLAMA_BUILD_SERVER"] == "ON"
    with pytest.raises(ServerBuildError, match="unknown backend"):
        BuildOptions(frozenset({"rocm"}))


def test_the_build_runs_only_the_server_target_on_every_core(tmp_path):
    source = SourceTree("0.0.0", tmp_path, "4227c9be4268ac844921b90f31595f81236bd317", "0" * 64)
    configure, build = cmake_commands(source, BuildOptions(), tmp_path / "b", jobs=7)
    assert {f"-D{k}={v}" for k, v in BASE_CMAKE_OPTIONS.items()} <= set(configure)
    assert "-DLLAMA_BUILD_COMMIT=4227c9b" in configure
    assert build[build.index("--target") + 1] == "llama-server" and build[build.index("-j") + 1] == "7"
    assert source.key == "4227c9be4268"
    assert SourceTree("0.0.0", tmp_path, None, "ab" * 32).key == "tree-abababababab"


def test_the_commit_comes_from_the_sdists_changelog(tmp_path):
    """unpack_sdist reads the version's own CHANGELOG entry, and records it for find_server."""
    import tarfile

    tree = tmp_path / "llama_cpp_python-9.9.9"
    (tree / "vendor" / "llama.cpp" / "tools" / "server").mkdir(parents=True)
    (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").write_text("# tree\n")
    (tree / "CHANGELOG.md").write_text(
        "## [9.9.9]\n\n- feat: Update llama.cpp to ggerganov/llama.cpp@" + "a" * 40 + "\n\n"
        "## [9.9.8]\n\n- feat: Update llama.cpp to ggerganov/llama.cpp@" + "b" * 40 + "\n"
    )
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    cache = tmp_path / "cache"
    source = unpack_sdist(sdist, cache, lambda message: None)
    assert source.commit == "a" * 40 and source.key == "a" * 12
    assert find_server(version="9.9.9", cache=cache) is None  # known version, never built


def test_missing_cmake_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerBuildError, match="cmake is not on PATH"):
        require_toolchain()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_missing_compiler_is_named(monkeypatch, tmp_path):
    (tmp_path / "cmake").symlink_to(shutil.which("cmake"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ServerBuildError, match="no C\\+\\+ compiler"):
        require_toolchain()
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(ServerBuildError, match="CXX=no-such-compiler\\+\\+"):
        require_toolchain()


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++")
def test_a_failing_build_says_where_with_the_end_of_its_log(tmp_path):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text(
        'cmake_minimum_required(VERSION 3.14)\nproject(broken NONE)\nmessage(FATAL_ERROR "the test broke this tree")\n'
    )
    source = SourceTree("0.0.0-test", tree, None, "c" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ServerBuildError) as info:
        build_server(source=source, cache=cache, jobs=1)
    message = str(info.value)
    assert "failed while configuring" in message and "the test broke this tree" in message
    log = cache / "builds" / "tree-cccccccccccc-cpu" / "build.log"
    assert str(log) in message and log.is_file()


def test_server_path_without_a_build_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTE_LLAMA_SERVER_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["engine", "server-path", "--vulkan"])
    assert result.exit_code == 1
    assert "route engine build-server --vulkan" in result.output and pinned_version() in result.output


def test_a_cached_binary_that_cannot_run_is_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTE_LLAMA_SERVER_CACHE", str(tmp_path))
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / f"{pinned_version()}.json").write_text('{"key": "abc"}')
    binary = tmp_path / "builds" / "abc-cpu" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o644)
    result = CliRunner().invoke(app, ["engine", "server-path"])
    assert result.exit_code == 1 and "is not executable" in result.output and "--force" in result.output
    os.chmod(binary, 0o755)
    result = CliRunner().invoke(app, ["engine", "server-path"])
    assert result.exit_code == 0 and result.output.strip() == str(binary)
    assert find_server() == Path(str(binary))

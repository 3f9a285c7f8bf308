"""Fetching against a seeded HF cache (HF_HUB_OFFLINE=1) and a loopback stand-in for the Hub.

The cache is laid out by hand exactly as huggingface-hub writes it (blobs/<sha256>,
snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<branch>), and checked with
huggingface-hub's own try_to_load_from_cache. The loopback Hub is a real HTTP server that
counts requests, so "no retries" is asserted by counting, not by timing.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest

from models import fetch
from models.catalog import ModelSpec, catalog_from_data
from models.errors import WeightsUnavailable

REPO = "tiny-org/Tiny-GGUF"
FILE = "tiny-q4.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec_for(gguf: Path | None = None, *, sha256: str | None = None, size: int | None = None, revision: str = COMMIT,
             mirrors: list[str] | None = None, model_id: str = "tiny") -> ModelSpec:
    source = {"kind": "hf", "repo": REPO, "file": FILE, "revision": revision}
    if gguf is not None:
        source["sha256"] = sha256 or sha256_file(gguf)
        source["size_bytes"] = size or gguf.stat().st_size
    if mirrors:
        source["mirrors"] = mirrors
    return catalog_from_data({"models": [{"id": model_id, "labels": ["code_edit"], "source": source}]}).get(model_id)


def seed_cache(cache: Path, gguf: Path, *, commit: str = COMMIT, branch: str | None = None, blob_name: str | None = None,
               filename: str = FILE) -> Path:
    """Write the file into the cache the way huggingface-hub does, and return the snapshot path."""
    storage = cache / ("models--" + REPO.replace("/", "--"))
    blob = storage / "blobs" / (blob_name or sha256_file(gguf))
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(gguf.read_bytes())
    pointer = storage / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    if branch:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / branch).write_text(commit)
    return pointer


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A private HF cache for this test, offline by default (HF_HUB_OFFLINE=1)."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    (home / "hub").mkdir(parents=True)
    return home / "hub"


class FakeHub:
    """A loopback HTTP server standing in for the Hub: counts requests; serves files or fails."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.status_for_all: int | None = None  # e.g. 503: the Hub is down
        self.files: dict[str, tuple[bytes, str, str]] = {}  # url path -> (body, etag, commit)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _answer(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                if hub.status_for_all:
                    self.send_response(hub.status_for_all)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/":
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                entry = hub.files.get(self.path)
                if entry is None:
                    body = b'{"error": "Entry not found"}'
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if with_body:
                        self.wfile.write(body)
                    return
                body, etag, commit = entry
                self.send_response(200)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve(self, repo: str, revision: str, filename: str, body: bytes, *, etag: str | None = None) -> None:
        self.files[f"/{repo}/resolve/{revision}/{filename}"] = (body, etag or hashlib.sha256(body).hexdigest(), revision)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch) -> Iterator[FakeHub]:
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


@pytest.fixture
def online(monkeypatch, hf_cache):
    """Network allowed for this test (huggingface-hub read HF_HUB_OFFLINE at import: reset it too)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.utils.reset_sessions()
    yield hf_cache
    huggingface_hub.utils.reset_sessions()


# --------------------------------------------------------------------------- seeded cache, offline


def test_seeded_cache_resolves_offline_to_the_snapshot_path(hf_cache, tiny_gguf, fake_hub):
    pointer = seed_cache(hf_cache, tiny_gguf)
    spec = spec_for(tiny_gguf)
    # The seeded layout is what huggingface-hub itself recognises.
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE, cache_dir=str(hf_cache), revision=COMMIT) == str(pointer)
    assert fetch.is_cached(spec)
    path = fetch.resolve_weights(spec, progress=False)
    assert path == pointer
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert fake_hub.requests == []  # offline means no request at all


def test_a_branch_revision_resolves_through_refs(hf_cache, tiny_gguf):
    pointer = seed_cache(hf_cache, tiny_gguf, branch="main")
    assert fetch.resolve_weights(spec_for(tiny_gguf, revision="main"), progress=False) == pointer


def test_pull_of_a_cached_file_hashes_it_fully(hf_cache, tiny_gguf):
    seed_cache(hf_cache, tiny_gguf)
    assert fetch.pull(spec_for(tiny_gguf), progress=False).read_bytes() == tiny_gguf.read_bytes()


def test_offline_and_not_cached_fails_at_once_with_the_fix(hf_cache, tiny_gguf, fake_hub):
    spec = spec_for(tiny_gguf)
    assert not fetch.is_cached(spec)
    with pytest.raises(WeightsUnavailable) as info:
        fetch.resolve_weights(spec, progress=False)
    message = info.value.message
    assert "HF_HUB_OFFLINE" in message and "route models pull tiny" in message
    assert info.value.status == 503 and info.value.code == "weights_unavailable"
    assert fake_hub.requests == []


def test_not_downloading_and_not_cached_names_the_pull_command(hf_cache, tiny_gguf, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsUnavailable, match="route models pull tiny"):
        fetch.resolve_weights(spec_for(tiny_gguf), download=False, progress=False)
    assert fake_hub.requests == []


def test_a_cached_file_with_another_sha256_is_refused(hf_cache, tiny_gguf):
    seed_cache(hf_cache, tiny_gguf)
    spec = spec_for(tiny_gguf, sha256="f" * 64)
    with pytest.raises(WeightsUnavailable, match=f"pins {'f' * 64}"):
        fetch.resolve_weights(spec, progress=False)


def test_tampered_bytes_under_the_right_blob_name_are_caught_by_pull(hf_cache, tiny_gguf, tmp_path):
    tampered = tmp_path / "tampered.gguf"
    data = bytearray(tiny_gguf.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    seed_cache(hf_cache, tampered, blob_name=sha256_file(tiny_gguf))
    spec = spec_for(tiny_gguf)
    with pytest.raises(WeightsUnavailable, match="sha256"):
        fetch.pull(spec, progress=False)


def test_a_cached_file_of_the_wrong_size_is_refused(hf_cache, tiny_gguf):
    seed_cache(hf_cache, tiny_gguf)
    with pytest.raises(WeightsUnavailable, match="bytes, the catalog pins"):
        fetch.resolve_weights(spec_for(tiny_gguf, size=tiny_gguf.stat().st_size + 1), progress=False)


# --------------------------------------------------------------------------- the Hub is out of reach


def test_hub_down_fails_after_one_probe_without_retries(online, tiny_gguf, fake_hub):
    fake_hub.status_for_all = 503
    with pytest.raises(WeightsUnavailable) as info:
        fetch.resolve_weights(spec_for(tiny_gguf), progress=False)
    assert "503" in info.value.message and "no PyPI mirror" in info.value.message
    assert len(fake_hub.requests) == 1  # the probe; huggingface-hub's five retries never start


def test_hub_unreachable_fails_with_the_reason(online, tiny_gguf, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    with pytest.raises(WeightsUnavailable, match="unreachable"):
        fetch.resolve_weights(spec_for(tiny_gguf), progress=False)


# --------------------------------------------------------------------------- downloading from a Hub


def test_download_from_the_hub_lands_in_the_cache_verified(online, tiny_gguf, fake_hub):
    body = tiny_gguf.read_bytes()
    fake_hub.serve(REPO, COMMIT, FILE, body)
    spec = spec_for(tiny_gguf)
    path = fetch.resolve_weights(spec, progress=False)
    assert path.read_bytes() == body
    assert path.resolve().name == sha256_file(tiny_gguf)  # the blob is named by its sha256
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE, cache_dir=str(online), revision=COMMIT) == str(path)
    methods = [m for m, _ in fake_hub.requests]
    assert methods == ["HEAD", "HEAD", "GET"]  # probe, metadata, download
    fake_hub.requests.clear()
    assert fetch.resolve_weights(spec, progress=False) == path
    assert fake_hub.requests == []  # cached: no network


def test_download_with_a_wrong_sha256_is_refused_and_deleted(online, tiny_gguf, fake_hub):
    fake_hub.serve(REPO, COMMIT, FILE, tiny_gguf.read_bytes())
    spec = spec_for(tiny_gguf, sha256="0" * 64)
    with pytest.raises(WeightsUnavailable, match="sha256"):
        fetch.resolve_weights(spec, progress=False)
    assert not fetch.is_cached(spec)
    assert not list((online / ("models--" + REPO.replace("/", "--")) / "blobs").iterdir())


def test_a_missing_file_on_the_hub_is_a_clear_error(online, tiny_gguf, fake_hub):
    with pytest.raises(WeightsUnavailable, match="EntryNotFound"):
        fetch.resolve_weights(spec_for(tiny_gguf), progress=False)
    assert len(fake_hub.requests) == 2  # probe + one metadata request


# --------------------------------------------------------------------------- remove, list, other kinds


def test_remove_deletes_pointer_and_unshared_blob(hf_cache, tiny_gguf):
    pointer = seed_cache(hf_cache, tiny_gguf)
    blob = pointer.resolve()
    spec = spec_for(tiny_gguf)
    assert fetch.remove(spec) is True
    assert not pointer.exists() and not blob.exists()
    assert not fetch.is_cached(spec)
    assert fetch.remove(spec) is False


def test_remove_keeps_a_blob_another_snapshot_uses(hf_cache, tiny_gguf):
    pointer = seed_cache(hf_cache, tiny_gguf)
    other = hf_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / ("f" * 40) / FILE
    other.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(pointer.resolve(), other.parent), other)
    assert fetch.remove(spec_for(tiny_gguf)) is True
    assert other.resolve().is_file()


def test_list_models_reports_size_labels_and_cache_state(hf_cache, tiny_gguf, tmp_path):
    seed_cache(hf_cache, tiny_gguf)
    catalog = catalog_from_data({"models": [
        {"id": "tiny", "labels": ["code_edit", "fim"], "source": {"kind": "hf", "repo": REPO, "file": FILE, "revision": COMMIT,
                                                                    "size_bytes": tiny_gguf.stat().st_size}},
        {"id": "other", "labels": ["chat"], "source": {"kind": "hf", "repo": "x/y", "file": "z.gguf"}},
        {"id": "mine", "labels": ["instruct"], "source": {"kind": "local", "path": str(tiny_gguf)}},
        {"id": "far", "labels": [], "source": {"kind": "upstream", "urls": ["http://127.0.0.1:9"]}},
    ]})
    rows = {r.id: r for r in fetch.list_models(catalog, loaded={"tiny"})}
    assert rows["tiny"].cached is True and rows["tiny"].size_bytes == tiny_gguf.stat().st_size
    assert rows["tiny"].labels == ("code_edit", "fim") and rows["tiny"].loaded is True
    assert rows["other"].cached is False and rows["other"].loaded is False
    assert rows["mine"].cached is True and rows["mine"].size_bytes == tiny_gguf.stat().st_size
    assert rows["far"].cached is None and rows["far"].kind == "upstream"
    assert all(r.loaded is None for r in fetch.list_models(catalog))


def test_local_and_upstream_sources(tmp_path, tiny_gguf):
    catalog = catalog_from_data({"models": [
        {"id": "mine", "source": {"kind": "local", "path": str(tiny_gguf)}},
        {"id": "gone", "source": {"kind": "local", "path": str(tmp_path / "gone.gguf")}},
        {"id": "far", "source": {"kind": "upstream", "urls": ["http://127.0.0.1:9"]}},
    ]})
    assert fetch.resolve_weights(catalog.get("mine")) == tiny_gguf
    with pytest.raises(WeightsUnavailable, match="do not exist"):
        fetch.resolve_weights(catalog.get("gone"))
    assert fetch.resolve_weights(catalog.get("far")) is None
    assert fetch.remove(catalog.get("mine")) is False and tiny_gguf.exists()

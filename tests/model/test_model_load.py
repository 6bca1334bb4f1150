from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeshift.errors import ConfigError, ModelError
from edgeshift.model import graph_io, load_model


def test_loads_a_model_file(mlp_path: Path) -> None:
    loaded = load_model(mlp_path)
    assert loaded.path == mlp_path
    assert loaded.manifest is None
    inputs, outputs = graph_io(loaded.proto)
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [("x", "float32", ("batch", 8))]
    assert [(o.name, o.shape) for o in outputs] == [("y", ("batch", 4))]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_text_file_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelError, match="not"):
        load_model(path)


def test_truncated_protobuf(tmp_path: Path, mlp_path: Path) -> None:
    data = mlp_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated|corrupt|not a valid"):
        load_model(cut)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError):
        load_model(path)


def test_directory_with_one_model(tmp_path: Path, mlp_path: Path) -> None:
    assert load_model(mlp_path.parent).path == mlp_path


def test_directory_with_two_models_is_ambiguous(tmp_path: Path, mlp_path: Path) -> None:
    (tmp_path / "other.onnx").write_bytes(mlp_path.read_bytes())
    with pytest.raises(ModelError, match="2 .onnx files"):
        load_model(tmp_path)


def test_artifact_directory(tmp_path: Path, mlp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(mlp_path.read_bytes())
    (art / "manifest.json").write_text(
        json.dumps({"model_file": "model.onnx", "backend": "openvino"})
    )
    loaded = load_model(art)
    assert loaded.path == art / "model.onnx"
    assert loaded.manifest == {"model_file": "model.onnx", "backend": "openvino"}
    assert loaded.artifact_dir == art


def test_artifact_with_bad_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tmp_path)


def test_artifact_naming_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"model_file": "gone.onnx"}))
    with pytest.raises(ModelError, match="missing"):
        load_model(tmp_path)


def test_external_data_is_loaded(tmp_path: Path, mlp_path: Path) -> None:
    model = onnx.load(mlp_path)
    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save(
        model,
        ext,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (ext.parent / "weights.bin").stat().st_size > 0
    loaded = load_model(ext)
    assert len(loaded.proto.graph.initializer[0].raw_data) > 0


def test_external_data_missing(tmp_path: Path, mlp_path: Path) -> None:
    model = onnx.load(mlp_path)
    ext = tmp_path / "model.onnx"
    onnx.save(
        model,
        ext,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="external data|weight"):
        load_model(ext)

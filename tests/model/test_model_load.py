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


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked-dir"])
def test_manifest_cannot_point_outside_its_directory(
    tmp_path: Path, mlp_path: Path, kind: str
) -> None:
    from edgeshift.runtime import open_backend

    outside = tmp_path / "outside.onnx"
    outside.write_bytes(mlp_path.read_bytes())
    art = tmp_path / "art"
    art.mkdir()
    model_file = {
        "dotdot": "../outside.onnx",
        "absolute": str(outside),
        "symlink": "link.onnx",
        "symlinked-dir": "sub/outside.onnx",
    }[kind]
    if kind == "symlink":
        (art / "link.onnx").symlink_to(outside)
    if kind == "symlinked-dir":
        (art / "sub").symlink_to(tmp_path)
    (art / "manifest.json").write_text(json.dumps({"model_file": model_file}))
    for read in (load_model, open_backend):
        with pytest.raises(ConfigError, match="points outside the artifact directory") as info:
            read(art)
        assert str(tmp_path) not in str(info.value)


def test_a_symlink_inside_the_artifact_is_fine(tmp_path: Path, mlp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(mlp_path.read_bytes())
    (art / "alias.onnx").symlink_to(art / "model.onnx")
    (art / "manifest.json").write_text(json.dumps({"model_file": "alias.onnx"}))
    assert load_model(art).path == art / "alias.onnx"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"optimized_model_path": "/tmp/x.onnx"}, "'optimized_model_path' is not allowed"),
        ({"enable_profiling": True}, "'enable_profiling' is not allowed"),
        ({"profile_file_prefix": "p"}, "'profile_file_prefix' is not allowed"),
        ({"session.save_model_format": "ORT"}, "is not allowed"),
        ({"CACHE_DIR": "/tmp"}, "'CACHE_DIR' is not allowed"),
        ({"num_streams": "2"}, "'num_streams' must be of type int"),
        ({"allow_spinning": 1}, "'allow_spinning' must be of type bool"),
        ([1, 2], "'runtime_options' must be an object"),
    ],
)
def test_manifest_runtime_options_are_allow_listed(
    tmp_path: Path, mlp_path: Path, options: object, needle: str
) -> None:
    from edgeshift.runtime import open_backend

    (tmp_path / "model.onnx").write_bytes(mlp_path.read_bytes())
    manifest = {"model_file": "model.onnx", "backend": "onnxruntime", "runtime_options": options}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for read in (load_model, open_backend):
        with pytest.raises(ConfigError, match=needle):
            read(tmp_path)
    assert not (tmp_path.parent / "x.onnx").exists()


def test_recorded_runtime_options_still_load(tmp_path: Path, mlp_path: Path) -> None:
    from edgeshift.runtime import open_backend

    (tmp_path / "model.onnx").write_bytes(mlp_path.read_bytes())
    options = {"precision": "fp32", "graph_optimization_level": "basic", "allow_spinning": False}
    manifest = {"model_file": "model.onnx", "backend": "onnxruntime", "runtime_options": options}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    backend = open_backend(tmp_path, threads=1)
    try:
        assert backend.runtime_options() == options
    finally:
        backend.close()


def _gather_graph(chain: list[str], input_type: int = onnx.TensorProto.INT64) -> onnx.GraphProto:
    from onnx import helper, numpy_helper

    nodes, source = [], "ids"
    for i, op in enumerate(chain):
        extra = {"to": onnx.TensorProto.INT64} if op == "Cast" else {}
        inputs = [source, "axes"] if op == "Unsqueeze" else [source]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], **extra))
        source = f"t{i}"
    nodes.append(helper.make_node("Gather", ["table", source], ["out"], axis=0))
    table = numpy_helper.from_array(np.zeros((7, 3), np.float32), "table")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", input_type, ["n"])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        [table, axes],
    )


def test_gather_index_bounds_follow_id_passthrough_ops() -> None:
    from edgeshift.model.load import gather_index_bounds

    assert gather_index_bounds(_gather_graph([])) == {"ids": 7}
    assert gather_index_bounds(_gather_graph(["Cast", "Unsqueeze", "Identity"])) == {"ids": 7}
    # A float input that is cast to ids is not a token-id input; an op that computes new
    # values (Neg) breaks the chain.
    assert gather_index_bounds(_gather_graph(["Cast"], onnx.TensorProto.FLOAT)) == {}
    assert gather_index_bounds(_gather_graph(["Neg"])) == {}


def test_gather_index_bounds_of_an_mlp_are_empty(mlp_path: Path) -> None:
    from edgeshift.model.load import gather_index_bounds

    assert gather_index_bounds(load_model(mlp_path).proto.graph) == {}

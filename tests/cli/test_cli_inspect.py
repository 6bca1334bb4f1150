"""`edgeshift inspect` end to end: tables, JSON, real runtime load checks, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from onnx import TensorProto, helper, numpy_helper
from tests.helpers import assert_one_line_error
from typer.testing import CliRunner

from edgeshift.cli.main import app

F = TensorProto.FLOAT


def _conv_net() -> onnx.ModelProto:
    # x [N,3,8,8] → Conv 4×3×3×3 (pad 1) → Relu → GlobalAveragePool → Flatten → Gemm 4→2.
    # At N=1: Conv MACs = 4·8·8 · 27 = 6912; Gemm MACs = 4·2 = 8; total 6920.
    # Params: 108 + 4 (conv) + 8 + 2 (gemm) = 122.
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "g"),
        numpy_helper.from_array(np.zeros(2, np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.producer_name, model.producer_version = "unit-test", "1.0"
    model.ir_version = 8  # what the installed runtimes all read
    return model


@pytest.fixture
def conv_path(tmp_path: Path) -> Path:
    path = tmp_path / "convnet.onnx"
    onnx.save(_conv_net(), path)
    return path


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["inspect", *args])


def test_table_shows_the_numbers(conv_path: Path) -> None:
    result = _invoke(str(conv_path), "--no-load-check", "--top", "2")
    assert result.exit_code == 0, result.stderr
    out = result.output
    assert "opset 17" in out and "unit-test 1.0" in out
    assert "[N, 3, 8, 8]" in out and "[1, 3, 8, 8]" in out
    assert "x[0] (N) = 1 (batch)" in out
    assert "122" in out  # params
    assert "6,920" in out  # MACs
    assert "14,352" in out  # FLOPs = 2·6920 + Relu 256 + GlobalAveragePool 256
    assert "Conv" in out and "Gemm" in out and "conv" in out
    assert "Runtimes" not in out


def test_json_has_the_fields(conv_path: Path) -> None:
    result = _invoke(str(conv_path), "--json", "--batch", "2")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == str(conv_path)
    assert data["input_shapes"] == {"x": [2, 3, 8, 8]}
    assert data["assumed"] == []
    assert data["params"] == 122
    assert data["weight_bytes"] == 122 * 4
    assert data["macs"] == 2 * 6920
    # FLOPs: 2·MACs, + Relu and GlobalAveragePool one per element (2·4·8·8 each).
    assert data["flops"] == 2 * 2 * 6920 + 512 + 512
    assert data["macs_by_op"]["Conv"] == 2 * 6912
    assert data["op_histogram"] == {
        "Conv": 1, "Relu": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1
    }  # fmt: skip
    assert {n["name"] for n in data["nodes"]} == {"conv", "relu", "gap", "flatten", "fc"}
    for field in ("peak_activation_bytes", "naive_activation_bytes", "uncounted", "ir_version"):
        assert field in data
    # x (1536 B) and c (2048 B) at the Conv, or c + r at the Relu (4096 B): the peak.
    assert data["peak_activation_bytes"] == 2 * 2048
    assert data["load_check"] == [
        {"backend": "onnxruntime", "loads": True, "error": None},
        {"backend": "openvino", "loads": True, "error": None},
    ]


def test_no_load_check_in_json(conv_path: Path) -> None:
    result = _invoke(str(conv_path), "--json", "--no-load-check")
    assert json.loads(result.stdout)["load_check"] is None


def test_shape_override_by_input_name(conv_path: Path) -> None:
    result = _invoke(str(conv_path), "--json", "--no-load-check", "--shape", "x=4x3x8x8")
    assert json.loads(result.stdout)["macs"] == 4 * 6920


def test_artifact_directory_with_one_model(conv_path: Path) -> None:
    result = _invoke(str(conv_path.parent), "--json", "--no-load-check")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 122


def test_external_data_model(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(_conv_net(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)  # fmt: skip
    result = _invoke(str(path), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"] == 122 and data["macs"] == 6920
    assert all(r["loads"] for r in data["load_check"])


def test_custom_op_model_still_inspected_with_runtime_errors(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Frobnicate", ["x"], ["h"], domain="acme.ops"),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)]
    )
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)

    result = _invoke(str(path), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    checks = {r["backend"]: r for r in data["load_check"]}
    assert not checks["onnxruntime"]["loads"] and "Frobnicate" in checks["onnxruntime"]["error"]
    assert not checks["openvino"]["loads"] and "Frobnicate" in checks["openvino"]["error"]
    assert any("acme.ops.Frobnicate" in note for note in data["uncounted"])

    table = _invoke(str(path))
    assert table.exit_code == 0, table.stderr
    assert "no" in table.output and "Frobnicate" in table.output
    assert "Not counted" in table.output


# --- bad input ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(_invoke(str(tmp_path / "nope.onnx")), "model not found")


def test_text_file_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    assert_one_line_error(_invoke(str(path)), "notes.onnx")


def test_truncated_protobuf(tmp_path: Path, conv_path: Path) -> None:
    data = conv_path.read_bytes()
    half = tmp_path / "half.onnx"
    half.write_bytes(data[: len(data) // 2])
    assert_one_line_error(_invoke(str(half)), "half.onnx")


def test_unknown_shape_name_suggests_the_nearest(conv_path: Path) -> None:
    assert_one_line_error(_invoke(str(conv_path), "--shape", "NN=2"), "did you mean 'N'")


def test_bad_shape_syntax(conv_path: Path) -> None:
    assert_one_line_error(_invoke(str(conv_path), "--shape", "x:1x3"), "bad --shape")


def test_shape_rank_mismatch(conv_path: Path) -> None:
    assert_one_line_error(_invoke(str(conv_path), "--shape", "x=1x3x8"), "rank")


def test_bad_batch(conv_path: Path) -> None:
    assert_one_line_error(_invoke(str(conv_path), "--batch", "0"), "--batch")


def test_symbolic_dim_override(conv_path: Path) -> None:
    result = _invoke(str(conv_path), "--json", "--no-load-check", "--shape", "N=3")
    data = json.loads(result.stdout)
    assert data["input_shapes"] == {"x": [3, 3, 8, 8]}
    assert data["macs"] == 3 * 6920
    assert data["output_shapes"] == {"y": [3, 2]}

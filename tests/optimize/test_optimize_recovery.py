"""Per-layer sensitivity: the layer that really costs the accuracy is ranked first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from optimize_models import hot_pixel_cnn, hot_pixel_data

from edgeshift.model.repair import repair_for_quantization
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.recipes import BuildContext
from edgeshift.optimize.recipes.ort_static_int8 import OrtStaticInt8, float_consumers_read_float
from edgeshift.optimize.recovery import layer_sensitivity

pytestmark = pytest.mark.slow


def _context(tmp_path: Path) -> BuildContext:
    repaired = repair_for_quantization(hot_pixel_cnn()).model
    path = tmp_path / "repaired.onnx"
    onnx.save(repaired, str(path))
    x = hot_pixel_data(16)["x"]
    return BuildContext(
        source_path=path,
        repaired_path=path,
        repaired=repaired,
        workdir=tmp_path,
        calibration=[{"x": x[i : i + 1]} for i in range(len(x))],
        host=detect_host(),
        seed=0,
        quick=True,
        is_transformer=False,
    )


def test_hot_pixel_conv_ranked_most_sensitive(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    recipe = OrtStaticInt8()
    variant = recipe.build(ctx)
    ranking = layer_sensitivity(
        ctx.repaired, variant.model_path, recipe.quantized_nodes(ctx, variant), ctx.calibration
    )
    names = [name for name, _ in ranking]
    assert sorted(names) == ["conv1", "conv2", "fc"]
    assert names[0] == "conv1"
    # conv1 adds most of the output's error: its input is exact, its output is not.
    assert ranking[0][1] > 10 * max(abs(score) for _, score in ranking[1:])


def test_excluded_node_reads_float_input(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    variant = OrtStaticInt8().build(ctx, exclude=["conv1"])
    model = onnx.load(str(variant.model_path))
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv1.input[0] == "x"
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert conv2.input[0].endswith("DequantizeLinear_Output")


def test_float_consumers_are_rewired() -> None:
    # Q/DQ on tensor t feeds a quantized MatMul and a float Add: only the MatMul keeps DQ.
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.uint8(128), "z"),
        numpy_helper.from_array(np.eye(2, dtype=np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["t"], name="relu"),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"], name="q"),
        helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["tdq"], name="dq"),
        helper.make_node("MatMul", ["tdq", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["tdq", "m"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewired, moved = float_consumers_read_float(model, {"mm"})
    assert moved == 1
    by_name = {n.name: n for n in rewired.graph.node}
    assert list(by_name["add"].input) == ["t", "m"]
    assert list(by_name["mm"].input) == ["tdq", "w"]


def paddle_opset11_cnn() -> onnx.ModelProto:
    """As paddle2onnx writes a CNN: opset 11, weights and the reshape target in Constant nodes,
    unnamed nodes, the dynamic batch stored as ``dim_value: -1``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    consts = {
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.4,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "flat": np.asarray([-1, 8 * 6 * 6], np.int64),
        "w2": rng.standard_normal((8 * 6 * 6, 10)).astype(np.float32) * 0.05,
    }
    nodes = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))
        for name, value in consts.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_opset11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 1, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    return model


def _paddle_files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "paddle.onnx"
    onnx.save(paddle_opset11_cnn(), str(model))
    data = tmp_path / "eval.npz"
    x = np.random.default_rng(5).standard_normal((48, 1, 6, 6)).astype(np.float32)
    np.savez(data, x=x)
    return model, data


def test_nncf_int8_on_constant_weight_opset11_graph(tmp_path: Path) -> None:
    from edgeshift.optimize import optimize

    model, data = _paddle_files(tmp_path)
    result = optimize(model, data, recipes=["openvino-int8"], quick=True, metric="cosine")
    record = next(c for c in result.candidates if c.name == "openvino-int8")
    assert record.status in ("accepted", "chosen"), record.reason
    # cosine of int8 logits against fp32: per-tensor/per-channel int8 on two small layers
    # keeps ~1e-3; 0.01 is the embedding budget.
    assert record.drop is not None and record.drop < 0.01


def test_a_failing_nncf_build_names_recipe_node_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf

    from edgeshift.optimize import optimize

    def broken(model: onnx.ModelProto, *args: object, **kwargs: object) -> None:
        for node in model.graph.node:  # NNCF raises from its loops over the graph's nodes
            if node.op_type == "MatMul":
                raise KeyError("type")

    monkeypatch.setattr(nncf, "quantize", broken)
    model, data = _paddle_files(tmp_path)
    result = optimize(model, data, recipes=["openvino-int8", "ort-fp32-opt"], quick=True)
    record = next(c for c in result.candidates if c.name == "openvino-int8")
    assert record.status == "failed"
    reason = record.reason
    assert reason.startswith("build failed: openvino-int8: NNCF could not quantize the model")
    assert "at node MatMul_3 (MatMul)" in reason  # the repaired graph's name for it
    assert "KeyError: 'type'" in reason
    assert "--recipes" in reason and "\n" not in reason
    assert result.budget_met  # one failed candidate does not stop the search

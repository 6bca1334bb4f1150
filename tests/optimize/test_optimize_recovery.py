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

"""Model repair passes: each checked on a graph where the fix is needed and one where it is not,
and the repaired model must compute the same numbers as the original."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.repair import (
    constants_to_initializers,
    default_opset,
    infer_shapes,
    name_nodes,
    repair_for_quantization,
    upgrade_opset,
)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _paddle_like(opset: int = 11) -> onnx.ModelProto:
    """Weights in Constant nodes (tensor, float and ints forms) and unnamed nodes, as
    paddle2onnx writes them; y = (x @ W + b) * s, reshaped to [N, 3]."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["s"], value_float=0.5),
        helper.make_node("Constant", [], ["shape"], value_ints=[-1, 3]),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["xwb"]),
        helper.make_node("Mul", ["xwb", "s"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


X = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
# Hand computation: x @ W with W = [[0,1,2],[3,4,5]], + [1,2,3], * 0.5.
Y = (X.astype(np.float64) @ np.arange(6).reshape(2, 3) + [1.0, 2.0, 3.0]) * 0.5


def test_constants_become_initializers_and_numbers_stay() -> None:
    model = _paddle_like()
    result = constants_to_initializers(model)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Constant" not in ops
    assert {i.name for i in result.model.graph.initializer} == {"W", "b", "s", "shape"}
    assert result.notes == ["moved 4 Constant node(s) into initializers"]
    np.testing.assert_allclose(_run(result.model, X), Y, rtol=1e-6)
    # Pure: the input is untouched.
    assert [n.op_type for n in model.graph.node].count("Constant") == 4


def test_no_constants_is_no_change() -> None:
    model = constants_to_initializers(_paddle_like()).model
    again = constants_to_initializers(model)
    assert again.model is model and again.notes == []


def test_opset_upgraded_to_13_and_numbers_stay() -> None:
    model = _paddle_like(opset=11)
    result = upgrade_opset(model)
    assert default_opset(result.model) == 13
    assert result.notes == ["upgraded opset 11 -> 13"]
    np.testing.assert_allclose(_run(result.model, X), Y, rtol=1e-6)
    assert default_opset(model) == 11


def test_opset_already_new_enough_is_kept() -> None:
    model = _paddle_like(opset=17)
    assert upgrade_opset(model).model is model


def test_nodes_get_unique_names() -> None:
    model = _paddle_like()
    model.graph.node[5].name = "dup"
    model.graph.node[6].name = "dup"
    result = name_nodes(model)
    names = [n.name for n in result.model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names[5] == "dup"  # the first holder keeps its name
    assert result.notes == ["named 7 unnamed or duplicate node(s)"]


def test_shape_inference_types_intermediates() -> None:
    result = infer_shapes(constants_to_initializers(_paddle_like(opset=13)).model)
    typed = {v.name for v in result.model.graph.value_info}
    assert {"xw", "xwb", "m"} <= typed
    assert result.notes == []


def test_shape_inference_falls_back_without_failing() -> None:
    # The declared output type contradicts the graph (Relu of float declared int64): onnx's
    # strict inference raises; the repair must still return a usable model and say so.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        "contradiction",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = infer_shapes(model)
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]
    assert len(result.notes) == 1
    assert result.notes[0].startswith("onnx shape inference failed")


def test_repair_for_quantization_runs_every_pass() -> None:
    result = repair_for_quantization(_paddle_like(opset=11))
    model = result.model
    assert default_opset(model) >= 13
    assert "Constant" not in [n.op_type for n in model.graph.node]
    assert all(n.name for n in model.graph.node)
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, X), Y, rtol=1e-6)
    assert len(result.notes) == 3  # constants, opset, names (shapes infer silently)

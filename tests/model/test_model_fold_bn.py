"""Repair folds a BatchNormalization that follows a Conv into the Conv (paddle2onnx keeps them
apart; quantizers then run the BatchNormalization in float between Q/DQ pairs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeshift import zoo
from edgeshift.model.repair import fold_batch_norms, repair_for_quantization

RNG = np.random.default_rng(0)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(shared_reader: bool = False, bias: bool = True, group: int = 1) -> onnx.ModelProto:
    c = 4
    inits = [
        _init("w", RNG.standard_normal((c, c // group, 3, 3))),
        _init("scale", RNG.uniform(0.5, 2, c)),
        _init("beta", RNG.standard_normal(c)),
        _init("mean", RNG.standard_normal(c)),
        _init("var", RNG.uniform(0.1, 3, c)),
    ]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(_init("b", RNG.standard_normal(c)))
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["bn"], name="bn",
            epsilon=1e-3,
        ),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 8, 8])]
    if shared_reader:  # the Conv's output is read by another node too: no folding
        nodes.append(helper.make_node("Sigmoid", ["c"], ["z"], name="sig"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, c, 8, 8]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 8, 8])],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_folds_into_the_conv_and_computes_the_same() -> None:
    x = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for bias, group in ((True, 1), (False, 1), (True, 2)):
        model = _model(bias=bias, group=group)
        result = fold_batch_norms(model)
        ops = [n.op_type for n in result.model.graph.node]
        assert ops == ["Conv", "Relu"], ops
        assert result.notes == ["folded 1 BatchNormalization node(s) into the Conv before each"]
        names = {t.name for t in result.model.graph.initializer}
        assert not names & {"w", "b", "scale", "beta", "mean", "var"}  # replaced, not left
        onnx.checker.check_model(result.model)
        # float32 arithmetic in another order: a few ulps of values of magnitude ~10
        np.testing.assert_allclose(
            _run(result.model, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5
        )


def test_a_conv_output_read_elsewhere_is_left_alone() -> None:
    model = _model(shared_reader=True)
    result = fold_batch_norms(model)
    assert result.model is model and result.notes == []


def test_paddle_style_zoo_model_loses_its_batch_norms(tmp_path) -> None:
    m = zoo.get("quirk-paddle", tmp_path)
    original = onnx.load(str(m.model_path))
    assert any(n.op_type == "BatchNormalization" for n in original.graph.node)
    repaired = repair_for_quantization(original)
    assert not any(n.op_type == "BatchNormalization" for n in repaired.model.graph.node)
    assert any("BatchNormalization" in note for note in repaired.notes)
    x = dict(np.load(m.data_path))["x"][:16]
    name = original.graph.output[0].name
    got = ort.InferenceSession(
        repaired.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    want = ort.InferenceSession(str(m.model_path), providers=["CPUExecutionProvider"])
    # probabilities of a softmax: folding reorders float32 sums
    np.testing.assert_allclose(
        got.run([name], {"x": x})[0], want.run([name], {"x": x})[0], rtol=1e-4, atol=1e-5
    )


def test_a_conv_output_read_by_a_subgraph_body_is_left_alone() -> None:
    model = _model()
    c = helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [2, 4, 8, 8])
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body", [], [c])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], name="if", then_branch=body, else_branch=body)
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4, 8, 8]))
    result = fold_batch_norms(model)
    assert result.model is model and result.notes == []

"""The seq a fixed Reshape allows, whichever side of it carries the dim (issue #12: torch's
exporters freeze a traced length on one side or the other)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from edgeshift.errors import ShapeError
from edgeshift.model.analysis import analyze

FROZEN = 8  # the traced length frozen into the source tensor


def frozen_source_model() -> onnx.ModelProto:
    """A constant [FROZEN, 4] (a traced activation) reshaped to [seq, 4], seq read from x:
    the target follows seq, the source does not, so only seq = FROZEN runs."""
    table = numpy_helper.from_array(np.ones((FROZEN, 4), np.float32), "table")
    ints = {n: numpy_helper.from_array(np.asarray(v, np.int64), n)
            for n, v in (("one", [1]), ("two", [2]), ("four", [4]))}  # fmt: skip
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "one", "two"], ["seq"]),
        helper.make_node("Concat", ["seq", "four"], ["target"], axis=0),
        helper.make_node("Reshape", ["table", "target"], ["rows"]),
        helper.make_node("Add", ["rows", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "frozen_source",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, "seq", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, "seq", 4])],
        [table, *ints.values()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_bound_when_the_target_carries_the_dim() -> None:
    model = frozen_source_model()
    with pytest.raises(ShapeError, match=rf"seq=16 .*Reshape.*exactly {FROZEN}\b"):
        analyze(model, {"x": (1, 16, 4)})
    # the bound is what the runtime does: it runs at seq = FROZEN and nowhere else
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((1, FROZEN, 4), np.float32)})
    assert y.shape == (1, FROZEN, 4)
    with pytest.raises(
        Exception, match="Reshape|8 by 16"
    ):  # ORT may fold the Reshape; then the Add fails
        session.run(None, {"x": np.zeros((1, 16, 4), np.float32)})
    assert analyze(model, {"x": (1, FROZEN, 4)}).input_shapes == {"x": (1, FROZEN, 4)}

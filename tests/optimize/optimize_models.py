"""Small models and eval sets built with onnx.helper for the optimize tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HOT_PIXEL = 500.0


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def hot_pixel_cnn() -> onnx.ModelProto:
    """Conv classifier whose input carries a constant hot pixel in a channel the first conv
    ignores (zero weights): float outputs do not depend on it, but any per-tensor int8 scale
    for the input must span it, which rounds the real signal (|x| ~ 1) to a step of ~2."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.5
    w1[:, 1] = 0.0  # the hot channel contributes nothing in float
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    w3 = rng.standard_normal((8 * 8 * 8, 10)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "hot_pixel_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def hot_pixel_data(samples: int = 48, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.zeros((samples, 2, 8, 8), np.float32)
    x[:, 0] = rng.standard_normal((samples, 8, 8))
    x[:, 1, 0, 0] = HOT_PIXEL
    return {"x": x}


def paddle_style_cnn(opset: int = 12) -> onnx.ModelProto:
    """A conv net as paddle2onnx writes it: weights in Constant nodes, unnamed nodes, opset 12
    (where per-channel QDQ does not exist yet)."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((16 * 8 * 8, 10)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1)),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model

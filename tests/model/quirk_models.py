"""Small graphs with the quirks real exporters write, built with onnx.helper (shared by the
model, bench, runtime and CLI tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

POSITIONS = 16  # rows of the position table: the model's own limit on seq
HIDDEN = 4


def _model(graph: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8 if opset < 21 else 10)
    onnx.checker.check_model(model)
    return model


def negative_dims_mlp() -> onnx.ModelProto:
    """Paddle2ONNX style: dynamic batch stored as ``dim_value: -1``, opset 11, and the
    weights in Constant nodes rather than initializers. x[-1, 8] @ w[8, 4] + b, Relu."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w_value")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b_value")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w),
        helper.make_node("Constant", [], ["b"], value=b),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["xwb"]),
        helper.make_node("Relu", ["xwb"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_like",
        [helper.make_tensor_value_info("x", T.FLOAT, [-1, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, [-1, 4])],
    )
    return _model(graph, opset=11)


def position_table_model() -> onnx.ModelProto:
    """A BERT-style embedding: token ids [batch, seq] through a word table, plus a position
    table of POSITIONS rows indexed by Range(0, seq): seq > POSITIONS cannot run."""
    rng = np.random.default_rng(1)
    words = numpy_helper.from_array(rng.standard_normal((100, HIDDEN)).astype(np.float32), "words")
    table = numpy_helper.from_array(
        rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32), "positions"
    )
    scalars = [
        numpy_helper.from_array(np.asarray(v, np.int64), n)
        for n, v in (("one", 1), ("zero", 0), ("step", 1))
    ]
    nodes = [
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq_len"], axis=0),
        helper.make_node("Range", ["zero", "seq_len", "step"], ["pos"]),
        helper.make_node("Gather", ["positions", "pos"], ["pos_emb"], axis=0),
        helper.make_node("Gather", ["words", "ids"], ["word_emb"], axis=0),
        helper.make_node("Add", ["word_emb", "pos_emb"], ["emb"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embeddings",
        [helper.make_tensor_value_info("ids", T.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("emb", T.FLOAT, ["batch", "seq", HIDDEN])],
        [words, table, *scalars],
    )
    return _model(graph)


def fixed_reshape_model() -> onnx.ModelProto:
    """x[1, seq, 4] reshaped to a fixed [1, 32]: only seq = 8 fits."""
    target = numpy_helper.from_array(np.asarray([1, 32], np.int64), "target")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        "fixed_reshape",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, "seq", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 32])],
        [target],
    )
    return _model(graph)


def symbolic_seq_model() -> onnx.ModelProto:
    """x[batch, seq, 8] @ w[8, 8], Softmax: a transformer-shaped block with named dims."""
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Softmax", ["h"], ["y"], axis=-1),
        ],
        "seq_block",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 8])],
        [w],
    )
    return _model(graph)


def small_cnn(opset: int) -> onnx.ModelProto:
    """Conv 3->4 (3x3, pad 1) + Relu + GlobalAveragePool + Flatten on x[1, 3, 8, 8]: ops
    that exist unchanged from opset 9 to 21."""
    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        f"cnn_opset{opset}",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        [w],
    )
    return _model(graph, opset=opset)


def nhwc_conv_model() -> onnx.ModelProto:
    """tf2onnx style: an NHWC input [N, 8, 8, 3] transposed to NCHW around a Conv 3->4
    (3x3, pad 1) and back to NHWC."""
    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["x_nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
        ],
        "tf2onnx_like",
        [helper.make_tensor_value_info("x", T.FLOAT, ["unk__0", 8, 8, 3])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["unk__0", 8, 8, 4])],
        [w],
    )
    return _model(graph, opset=13)


def two_outputs_model() -> onnx.ModelProto:
    """x[batch, 6] -> logits (x @ w, [batch, 3]) and its Softmax: two outputs."""
    w = numpy_helper.from_array(np.ones((6, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "two_heads",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 6])],
        [
            helper.make_tensor_value_info("logits", T.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probs", T.FLOAT, ["batch", 3]),
        ],
        [w],
    )
    return _model(graph)


def save(model: onnx.ModelProto, directory: Path, name: str) -> Path:
    path = directory / f"{name}.onnx"
    onnx.save(model, str(path))
    return path

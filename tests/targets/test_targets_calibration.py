"""Host calibration per kernel class: how nodes are classed, how timings become figures,
the noise detector and the cache version. No wall clock: timings here are synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.analysis import analyze
from edgeshift.targets import _cal_graphs as graphs
from edgeshift.targets.roofline import kernel_class


def _classes(path: Path, stored: str = "fp32") -> list[tuple[str, str, float | None]]:
    return [(n.op_type, *kernel_class(n, stored)) for n in analyze(path).nodes if not n.folded]


def _strided_conv(path: Path, cin: int, cout: int, k: int, group: int, stride: int,
                  bias: bool = True) -> Path:  # fmt: skip
    w = np.ones((cout, cin // group, k, k), np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
                            strides=[stride, stride], group=group)  # fmt: skip
    hw = 32 // stride
    return graphs.save(path, [node], [graphs.vi("x", TensorProto.FLOAT, [1, cin, 32, 32])],
                       [graphs.vi("y", TensorProto.FLOAT, [1, cout, hw, hw])], inits)  # fmt: skip


@pytest.mark.parametrize(
    ("cin", "cout", "k", "group", "stride", "bias", "expected"),
    [
        (32, 32, 3, 32, 1, True, "conv_depthwise"),  # MobileNet depthwise 3x3
        (32, 32, 3, 32, 2, False, "conv_depthwise"),  # strided, no bias
        (64, 64, 5, 64, 1, True, "conv_depthwise"),
        (32, 64, 1, 1, 1, True, "conv_pointwise"),  # expansion 1x1
        (64, 16, 1, 1, 1, False, "conv_pointwise"),  # projection 1x1
        (16, 32, 1, 1, 2, True, "conv_pointwise"),  # ResNet downsample shortcut (depth 16)
        (32, 32, 1, 1, 1, True, "conv_pointwise"),  # depth 32 <= 49 yet not a kernel area
        (32, 32, 3, 1, 1, True, "conv_dense"),
        (3, 32, 3, 1, 2, False, "conv_dense"),  # a stem on an RGB image
        (64, 64, 7, 1, 2, True, "conv_dense"),  # ResNet stem-like 7x7 stride 2
        (32, 32, 3, 4, 1, True, "conv_dense"),  # grouped, not depthwise
    ],
)
def test_convs_are_classed_by_their_shape(
    tmp_path: Path, cin: int, cout: int, k: int, group: int, stride: int, bias: bool,
    expected: str,
) -> None:  # fmt: skip
    path = _strided_conv(tmp_path / "c.onnx", cin, cout, k, group, stride, bias)
    [(_, kind, rows)] = _classes(path)
    assert kind == expected
    assert rows == pytest.approx((32 // stride) ** 2)  # output positions


def test_int8_qdq_graphs_are_classed_like_their_float_kernels(tmp_path: Path) -> None:
    # The Conv/MatMul of a QDQ graph reads DequantizeLinear outputs: float-sized weights
    # folded at load time, though the model is stored int8.
    dw = _classes(graphs.conv(tmp_path / "dw.onnx", 32, 32, 3, 32, 16, int8=True), "int8")
    pw = _classes(graphs.conv(tmp_path / "pw.onnx", 32, 64, 1, 1, 16, int8=True), "int8")
    mm = _classes(graphs.gemm(tmp_path / "mm.onnx", 8, 64, 128, int8=True), "int8")
    assert ("Conv", "conv_depthwise", 256.0) in dw and ("Conv", "conv_pointwise", 256.0) in pw
    assert ("MatMul", "gemm", 8.0) in mm


def test_gemm_attention_recurrent_and_norm_classes(tmp_path: Path) -> None:
    assert _classes(graphs.gemm(tmp_path / "g.onnx", 1, 384, 1536)) == [("MatMul", "gemm", 1.0)]
    attn = _classes(graphs.attention(tmp_path / "a.onnx", 4, 64, 32))
    # QK^T and AV: both operands are activations, sized by their MACs (4 x 64 x 64 x 32).
    assert attn == [("MatMul", "attention", 4 * 64 * 64 * 32), ("Softmax", "norm", None),
                    ("MatMul", "attention", 4 * 64 * 64 * 32)]  # fmt: skip
    assert _classes(graphs.recurrent(tmp_path / "l.onnx", "LSTM", 20, 16, 32)) == [
        ("LSTM", "lstm", pytest.approx(20, rel=0.05))  # steps x batch; the bias is 2/(I+H) more
    ]
    [(_, gru, _)] = _classes(graphs.recurrent(tmp_path / "r.onnx", "GRU", 20, 16, 32))
    assert gru == "gru"
    assert {k for _, k, _ in _classes(graphs.norm_chain(tmp_path / "n.onnx", 2, 4, 8))} == {"norm"}
    ew = _classes(graphs.elementwise_chain(tmp_path / "e.onnx", 2, 64))
    assert [k for _, k, _ in ew] == ["elementwise", "elementwise"]


def test_every_calibration_graph_is_a_valid_model(tmp_path: Path) -> None:
    for path in (
        graphs.conv(tmp_path / "a.onnx", 8, 8, 3, 8, 4, int8=True),
        graphs.gemm(tmp_path / "b.onnx", 2, 8, 8, int8=True),
        graphs.attention(tmp_path / "c.onnx", 2, 4, 4),
        graphs.recurrent(tmp_path / "d.onnx", "GRU", 3, 4, 4),
        graphs.conv_chain(tmp_path / "e.onnx", 3),
        graphs.matmul_chain(tmp_path / "f.onnx", 3, 4),
    ):
        onnx.checker.check_model(onnx.load(path), full_check=True)

"""The small ONNX graphs the host calibration times: one per kernel class and size.

Float graphs take and return float32. The int8 graphs are the inside of a QDQ model as
``optimize`` writes it (uint8 activations in and out, int8 weights through
DequantizeLinear): ONNX Runtime fuses them into QLinearConv / QLinearMatMul, OpenVINO
into its int8 kernels, so the figure is the int8 kernel, not the (de)quantization at a
model's edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_F, _U8, _I8 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8


def save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def vi(name: str, elem: int, shape: list[int] | list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _weights(shape: tuple[int, ...], fan_in: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _qdq_io(name: str, inits: list, nodes: list) -> str:
    """DequantizeLinear of the uint8 input NAME; returns the float tensor's name."""
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(128, np.uint8), f"{name}_z")]  # fmt: skip
    nodes.append(
        helper.make_node("DequantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_f"])
    )
    return f"{name}_f"


def _requantize(out: str, i: int, nodes: list[Any], inits: list[Any]) -> str:
    """OUT through a uint8 QuantizeLinear/DequantizeLinear pair (scale 0.05, zero point 128),
    as a quantizer writes it between two int8 ops; returns the dequantized tensor's name."""
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"q{i}_s"),
              numpy_helper.from_array(np.array(128, np.uint8), f"q{i}_z")]  # fmt: skip
    nodes.append(helper.make_node("QuantizeLinear", [out, f"q{i}_s", f"q{i}_z"], [f"q{i}"]))
    nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"q{i}_s", f"q{i}_z"], [f"d{i}"]))
    return f"d{i}"


def _qdq_weight(w: np.ndarray, name: str, inits: list, nodes: list, axis: int | None) -> str:
    """int8 weights (per-channel along AXIS, or per-tensor) through DequantizeLinear."""
    if axis is None:
        scale = np.array(np.abs(w).max() / 127 or 1.0, np.float32)
        q = np.round(w / scale).astype(np.int8)
        zero = np.array(0, np.int8)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=red) / 127, 1e-8).astype(np.float32)
        q = np.round(w / np.expand_dims(scale, red)).astype(np.int8)
        zero = np.zeros(scale.shape, np.int8)
    inits += [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_s"),
              numpy_helper.from_array(zero, f"{name}_z")]  # fmt: skip
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                                  [name], **attrs))  # fmt: skip
    return name


def _quantize_out(src: str, nodes: list, inits: list) -> None:
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), "y_s"),
              numpy_helper.from_array(np.array(128, np.uint8), "y_z")]  # fmt: skip
    nodes.append(helper.make_node("QuantizeLinear", [src, "y_s", "y_z"], ["y"]))


def conv(path: Path, cin: int, cout: int, k: int, group: int, hw: int, int8: bool = False) -> Path:
    """One Conv (k x k, same padding, GROUP groups) on [1, cin, hw, hw] -> [1, cout, hw, hw]."""
    w = _weights((cout, cin // group, k, k), cin // group * k * k)
    nodes: list = []
    inits: list = []
    attrs: dict[str, Any] = {"pads": [k // 2] * 4, "kernel_shape": [k, k], "group": group}
    x_shape, y_shape = [1, cin, hw, hw], [1, cout, hw, hw]
    if not int8:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], **attrs))
        return save(path, nodes, [vi("x", _F, x_shape)], [vi("y", _F, y_shape)], inits)
    x = _qdq_io("x", inits, nodes)
    wq = _qdq_weight(w, "w", inits, nodes, axis=0)
    nodes.append(helper.make_node("Conv", [x, wq], ["yf"], **attrs))
    _quantize_out("yf", nodes, inits)
    return save(path, nodes, [vi("x", _U8, x_shape)], [vi("y", _U8, y_shape)], inits)


def gemm(
    path: Path, m: int, k: int, n: int, int8: bool = False, float_out: bool = False,
    n_matmuls: int = 1,
) -> Path:  # fmt: skip
    """N_MATMULS MatMuls with constant weights in a row, [m, k] x [k, n] then [m, n] x [n, k]
    and so on (a transformer's FFN: up and down projections, each of m x k x n MACs): inside
    a network a runtime converts the input (to bf16, to a blocked layout) once, not around
    every MatMul. int8: QDQ, uint8 in, a Q/DQ pair between the MatMuls. FLOAT_OUT (int8
    only): each MatMul feeds a bias Add and stays float until the next one's
    QuantizeLinear, as a transformer's projections in a QDQ model (ONNX Runtime runs them as
    MatMulIntegerToFloat, not QLinearMatMul); the input is then [batch, m, k]."""
    nodes: list = []
    inits: list = []
    dims = [k, n] * n_matmuls + [k]
    prev = _qdq_io("x", inits, nodes) if int8 else "x"
    for i in range(n_matmuls):
        w = _weights((dims[i], dims[i + 1]), dims[i], i)
        last = i == n_matmuls - 1
        # the graph's output "y" is the last MatMul's (its Add's; int8: its QuantizeLinear's)
        out = "y" if last and not int8 else ("yf" if last and not float_out else f"m{i}")
        if int8:
            wq = _qdq_weight(w, f"w{i}", inits, nodes, axis=None)
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            wq = f"w{i}"
        nodes.append(helper.make_node("MatMul", [prev, wq], [out]))
        if float_out:
            inits.append(numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}"))
            out_add = "y" if last else f"a{i}"
            nodes.append(helper.make_node("Add", [out, f"b{i}"], [out_add]))
            out = out_add
        prev = out
        if int8 and not last:  # requantize for the next MatMul, as a quantizer writes it
            prev = _requantize(out, i, nodes, inits)
    out_dim = dims[n_matmuls]
    if not int8:
        return save(path, nodes, [vi("x", _F, [m, k])], [vi("y", _F, [m, out_dim])], inits)
    if float_out:  # [batch, m, k] as in an exported transformer: with static 2-D shapes
        # ONNX Runtime would fuse MatMul + Add into a float Gemm instead
        x_shape: list[int | str] = ["batch", m, k]
        y_shape: list[int | str] = ["batch", m, out_dim]
        return save(path, nodes, [vi("x", _U8, x_shape)], [vi("y", _F, y_shape)], inits)
    _quantize_out(prev, nodes, inits)
    return save(path, nodes, [vi("x", _U8, [m, k])], [vi("y", _U8, [m, out_dim])], inits)


def attention(path: Path, heads: int, seq: int, dim: int) -> Path:
    """softmax(Q K^T) V on [1, heads, seq, dim] activations (no weights), as in a transformer."""
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inputs = [vi("q", _F, [1, heads, seq, dim]), vi("kt", _F, [1, heads, dim, seq]),
              vi("v", _F, [1, heads, seq, dim])]  # fmt: skip
    return save(path, nodes, inputs, [vi("y", _F, [1, heads, seq, dim])], [])


def recurrent(path: Path, op: str, seq: int, inputs: int, hidden: int) -> Path:
    """One LSTM or GRU layer over [seq, 1, inputs], batch 1, forward."""
    gates = {"LSTM": 4, "GRU": 3}[op]
    w = _weights((1, gates * hidden, inputs), inputs, 1)
    r = _weights((1, gates * hidden, hidden), hidden, 2)
    b = np.zeros((1, 2 * gates * hidden), np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (r, "r"), (b, "b"))]
    node = helper.make_node(op, ["x", "w", "r", "b"], ["y"], hidden_size=hidden)
    return save(path, [node], [vi("x", _F, [seq, 1, inputs])],
                [vi("y", _F, [seq, 1, 1, hidden])], inits)  # fmt: skip


def norm_chain(path: Path, n_ops: int, rows: int, width: int) -> Path:
    """x -> LayerNormalization -> ... (N_OPS) on [1, rows, width]: a transformer's norms."""
    scale, bias = np.ones(width, np.float32), np.zeros(width, np.float32)
    inits = [numpy_helper.from_array(scale, "g"), numpy_helper.from_array(bias, "b")]
    nodes, prev = [], "x"
    for i in range(n_ops):
        out = "y" if i == n_ops - 1 else f"t{i}"
        nodes.append(helper.make_node("LayerNormalization", [prev, "g", "b"], [out], axis=-1))
        prev = out
    shape = [1, rows, width]
    return save(path, nodes, [vi("x", _F, shape)], [vi("y", _F, shape)], inits)


def elementwise_chain(path: Path, n_ops: int, numel: int) -> Path:
    """x -> Add -> Mul -> Add -> ... (N_OPS nodes) on a [1, numel] float tensor."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n_ops):
        out = "y" if i == n_ops - 1 else f"t{i}"
        c = np.full((1,), 1.0 + 1e-3 * (i % 7), np.float32)
        inits.append(numpy_helper.from_array(c, f"c{i}"))
        nodes.append(helper.make_node("Add" if i % 2 == 0 else "Mul", [prev, f"c{i}"], [out]))
        prev = out
    return save(path, nodes, [vi("x", _F, [1, numel])], [vi("y", _F, [1, numel])], inits)


def matmul_chain(path: Path, n_ops: int, width: int) -> Path:
    """x -> MatMul -> MatMul -> ... on [1, width]: nodes no runtime fuses, each nearly free."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n_ops):
        out = "y" if i == n_ops - 1 else f"t{i}"
        inits.append(numpy_helper.from_array(_weights((width, width), width, i), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    return save(path, nodes, [vi("x", _F, [1, width])], [vi("y", _F, [1, width])], inits)


def conv_chain(path: Path, n_ops: int, channels: int = 8, hw: int = 4) -> Path:
    """x -> Conv 3x3 -> Conv -> ... on [batch, channels, hw, hw]: a conv's fixed cost, nearly
    no math. The batch dim is dynamic as in exported models (OpenVINO dispatches those slower)."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n_ops):
        out = "y" if i == n_ops - 1 else f"t{i}"
        w = _weights((channels, channels, 3, 3), 10 * 9 * channels, i)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], pads=[1, 1, 1, 1],
                                      kernel_shape=[3, 3]))  # fmt: skip
        prev = out
    shape: list[int | str] = ["batch", channels, hw, hw]
    return save(path, nodes, [vi("x", _F, shape)], [vi("y", _F, shape)], inits)


def conv_stack(
    path: Path, n_convs: int, channels: int, hw: int, int8: bool = False, k: int = 3,
    group: int = 1,
) -> Path:  # fmt: skip
    """N_CONVS k x k Convs (GROUP groups, same padding) in a row, CHANNELS -> CHANNELS on
    [1, CHANNELS, hw, hw]: a conv's speed inside a network, where a runtime's layout
    reorders (planar to blocked and back) happen once at the graph's edges, not around
    every conv. int8: QDQ as :func:`conv`, a Q/DQ pair between the convs as a quantizer
    writes them."""
    nodes: list = []
    inits: list = []
    attrs: dict[str, Any] = {"pads": [k // 2] * 4, "kernel_shape": [k, k], "group": group}
    shape = [1, channels, hw, hw]
    prev = _qdq_io("x", inits, nodes) if int8 else "x"
    for i in range(n_convs):
        w = _weights((channels, channels // group, k, k), channels // group * k * k, i)
        last = i == n_convs - 1
        out = "yf" if int8 and last else ("y" if last else f"t{i}")
        if int8:
            wq = _qdq_weight(w, f"w{i}", inits, nodes, axis=0)
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            wq = f"w{i}"
        nodes.append(helper.make_node("Conv", [prev, wq], [out], **attrs))
        prev = out
        if int8 and not last:  # requantize between the convs (uint8, as the quantizer does)
            prev = _requantize(out, i, nodes, inits)
    if not int8:
        return save(path, nodes, [vi("x", _F, shape)], [vi("y", _F, shape)], inits)
    _quantize_out("yf", nodes, inits)
    return save(path, nodes, [vi("x", _U8, shape)], [vi("y", _U8, shape)], inits)

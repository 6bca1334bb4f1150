"""MACs/FLOPs per op family, each checked against a hand computation on a one-node graph.

The graphs go through analyze(), so ONNX shape inference supplies the output shapes the
formulas use (as it does for real models).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.analysis import ModelAnalysis, analyze

F = TensorProto.FLOAT


def _analyze_one(
    op: str,
    inputs: dict[str, list[int]],
    weights: dict[str, np.ndarray] | None = None,
    n_outputs: int = 1,
    opset: int = 17,
    **attrs: object,
) -> ModelAnalysis:
    weights = weights or {}
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, [*inputs, *weights], outs, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, F, None) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return analyze(model)


def _w(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def test_gemm_macs_and_params_with_transposes_and_bias() -> None:
    # A is [K=6, M=4] (transA), B is [N=5, K=6] (transB), C is [5].
    a = _analyze_one("Gemm", {"a": [6, 4]}, {"b": _w(5, 6), "c": _w(5)}, transA=1, transB=1)
    assert a.macs == 4 * 6 * 5 == 120
    assert a.flops == 240
    assert a.params == 5 * 6 + 5
    assert a.weight_bytes == (30 + 5) * 4
    assert a.output_shapes == {"y0": (4, 5)}


def test_conv_macs_with_bias_groups_stride_padding_dilation() -> None:
    # X [2,4,10,10], W [6, 4/2, 3, 3], group 2, stride 2, pads 1, dilation 2:
    # H_out = floor((10 + 2 - 2·(3−1) − 1) / 2) + 1 = 4, so Y is [2, 6, 4, 4];
    # each output element is a dot product over 2·3·3 = 18 weights.
    a = _analyze_one(
        "Conv",
        {"x": [2, 4, 10, 10]},
        {"w": _w(6, 2, 3, 3), "b": _w(6)},
        group=2,
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        dilations=[2, 2],
    )
    assert a.output_shapes == {"y0": (2, 6, 4, 4)}
    assert a.macs == 2 * 6 * 4 * 4 * 18 == 3456
    assert a.flops == 2 * 3456
    assert a.params == 6 * 2 * 3 * 3 + 6
    conv = a.nodes[0]
    assert conv.weight_bytes == (108 + 6) * 4
    assert conv.input_bytes == 2 * 4 * 10 * 10 * 4
    assert conv.output_bytes == 2 * 6 * 4 * 4 * 4


def test_depthwise_conv_costs_one_channel_per_output() -> None:
    a = _analyze_one("Conv", {"x": [1, 8, 5, 5]}, {"w": _w(8, 1, 3, 3)}, group=8, pads=[1, 1, 1, 1])
    assert a.macs == 8 * 5 * 5 * 9


def test_conv_transpose_macs_scatter_each_input_element() -> None:
    # X [1,2,3,3], W [C=2, M=4, 3, 3]: each of the 18 input elements feeds 4·3·3 outputs.
    a = _analyze_one("ConvTranspose", {"x": [1, 2, 3, 3]}, {"w": _w(2, 4, 3, 3)}, strides=[2, 2])
    assert a.output_shapes == {"y0": (1, 4, 7, 7)}
    assert a.macs == 18 * 36 == 648


def test_batched_broadcast_matmul_macs() -> None:
    # [2,4,8,16] × [16,32]: the weight broadcasts over the 2·4 batch.
    a = _analyze_one("MatMul", {"a": [2, 4, 8, 16]}, {"b": _w(16, 32)})
    assert a.macs == 2 * 4 * 8 * 16 * 32


def test_attention_matmuls_qk_and_av() -> None:
    # Q·Kᵀ: [B=1,h=2,S=5,d=8] × [1,2,8,5] → [1,2,5,5]; A·V: [1,2,5,5] × [1,2,5,8].
    qk = _analyze_one("MatMul", {"q": [1, 2, 5, 8], "kt": [1, 2, 8, 5]})
    av = _analyze_one("MatMul", {"a": [1, 2, 5, 5], "v": [1, 2, 5, 8]})
    assert qk.macs == 2 * 5 * 8 * 5 == 400
    assert av.macs == 2 * 5 * 5 * 8 == 400
    assert qk.params == 0  # activations × activations: no weights


def test_matmul_with_vector_operands() -> None:
    assert _analyze_one("MatMul", {"a": [7]}, {"b": _w(7, 3)}).macs == 21
    assert _analyze_one("MatMul", {"a": [4, 7]}, {"b": _w(7)}).macs == 28


def test_einsum_counts_the_naive_contraction() -> None:
    a = _analyze_one("Einsum", {"x": [3, 4, 5], "y": [3, 5, 6]}, equation="bij,bjk->bik")
    assert a.macs == 3 * 4 * 5 * 6
    ellipsis = _analyze_one("Einsum", {"x": [2, 3, 4, 5], "y": [5, 6]}, equation="...ij,jk->...ik")
    assert ellipsis.macs == 2 * 3 * 4 * 5 * 6


@pytest.mark.parametrize(
    ("op", "gates", "per_unit"), [("LSTM", 4, 13), ("GRU", 3, 11), ("RNN", 1, 2)]
)
def test_recurrent_macs_per_direction_over_the_sequence(op: str, gates: int, per_unit: int) -> None:
    seq, batch, inp, hidden, dirs = 5, 2, 3, 4, 2
    a = _analyze_one(
        op,
        {"x": [seq, batch, inp]},
        {"w": _w(dirs, gates * hidden, inp), "r": _w(dirs, gates * hidden, hidden)},
        n_outputs=2,
        hidden_size=hidden,
        direction="bidirectional",
    )
    # W·x + R·h per direction, step and batch row: gates·H·(I + H).
    macs = dirs * seq * batch * gates * hidden * (inp + hidden)
    assert a.macs == macs
    assert a.flops == 2 * macs + dirs * seq * batch * per_unit * hidden
    if op == "LSTM":
        assert macs == 2 * 5 * 2 * 4 * 4 * 7 == 2240


def test_lstm_batch_first_layout() -> None:
    a = _analyze_one(
        "LSTM",
        {"x": [2, 5, 3]},  # layout=1: [batch, seq, input]
        {"w": _w(1, 16, 3), "r": _w(1, 16, 4)},
        n_outputs=2,
        opset=14,
        hidden_size=4,
        layout=1,
    )
    assert a.macs == 5 * 2 * 16 * (3 + 4)


def test_pools() -> None:
    # MaxPool 3×3 stride 2 on 7×7: 3×3 outputs, 9 compares each, 2 channels.
    mp = _analyze_one("MaxPool", {"x": [1, 2, 7, 7]}, kernel_shape=[3, 3], strides=[2, 2])
    assert (mp.macs, mp.flops) == (0, 2 * 9 * 9)
    ap = _analyze_one("AveragePool", {"x": [1, 2, 4, 4]}, kernel_shape=[2, 2], strides=[2, 2])
    assert ap.flops == 2 * 4 * 4
    gap = _analyze_one("GlobalAveragePool", {"x": [1, 3, 5, 5]})
    assert gap.flops == 75


def test_normalizations() -> None:
    x = {"x": [2, 3, 4, 4]}
    bn = _analyze_one("BatchNormalization", x, {"s": _w(3), "b": _w(3), "m": _w(3), "v": _w(3)})
    assert (bn.macs, bn.flops) == (0, 2 * 96)
    assert bn.params == 12
    inorm = _analyze_one("InstanceNormalization", x, {"s": _w(3), "b": _w(3)})
    assert inorm.flops == 7 * 96
    ln = _analyze_one("LayerNormalization", {"x": [2, 5, 8]}, {"g": _w(8), "b": _w(8)}, axis=-1)
    assert ln.flops == 7 * 80


def test_elementwise_softmax_and_reductions() -> None:
    # Add broadcasts [4,1] + [1,6] into 24 elements: one FLOP per output element.
    add = _analyze_one("Add", {"a": [4, 1], "b": [1, 6]})
    assert (add.macs, add.flops) == (0, 24)
    for op in ("Relu", "Sigmoid", "Tanh", "Erf"):
        assert _analyze_one(op, {"x": [3, 7]}).flops == 21
    assert _analyze_one("Gelu", {"x": [3, 7]}, opset=20).flops == 21
    assert _analyze_one("Softmax", {"x": [3, 7]}, axis=-1).flops == 5 * 21
    # ReduceMean reads every input element once.
    assert _analyze_one("ReduceMean", {"x": [3, 7]}, axes=[1]).flops == 21
    assert _analyze_one("Sum", {"a": [3, 7], "b": [3, 7], "c": [3, 7]}).flops == 2 * 21


def test_data_movement_costs_nothing_but_is_counted() -> None:
    a = _analyze_one("Transpose", {"x": [3, 7]}, perm=[1, 0])
    assert (a.macs, a.flops) == (0, 0)
    assert a.nodes[0].counted
    assert a.uncounted == []


def test_unsupported_op_is_reported_not_guessed() -> None:
    a = _analyze_one("NonMaxSuppression", {"boxes": [1, 4, 4], "scores": [1, 1, 4]})
    assert not a.nodes[0].counted
    assert a.macs == 0
    assert any("NonMaxSuppression" in note and "no cost model" in note for note in a.uncounted)


def test_custom_domain_op_is_not_costed_as_its_namesake() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain="acme")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(_w(3, 2, 1, 1), "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]
    )
    a = analyze(model)
    assert not a.nodes[0].counted
    assert a.op_histogram == {"acme.Conv": 1}
    assert any(note.startswith("acme.Conv") for note in a.uncounted)


def test_unknown_input_shape_leaves_the_node_uncounted() -> None:
    # Reshape to a shape computed from data → MatMul's input shape is unknown.
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", F, [6, 4]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(_w(4, 2), "w")],
    )
    a = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    matmul = a.nodes[1]
    assert matmul.op_type == "MatMul" and not matmul.counted
    assert any("MatMul" in n and "shape unknown" in n for n in a.uncounted)
    assert any("unknown shape" in n for n in a.uncounted)  # r and y left out of memory


def _analyze_contrib(op: str, inputs: dict[str, list[int]], weights: dict[str, np.ndarray],
                     domain: str = "com.microsoft", opset: int = 17, **attrs: object
                     ) -> ModelAnalysis:  # fmt: skip
    node = helper.make_node(op, [*inputs, *weights], ["y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    return analyze(helper.make_model(graph, opset_imports=imports))


def test_matmul_nbits_uses_k_and_n_attributes() -> None:
    # A [2,3,16] × int4 B (N=8, K=16, one block of 16 → 8 packed bytes per row).
    a = _analyze_contrib(
        "MatMulNBits",
        {"a": [2, 3, 16]},
        {"b": np.zeros((8, 1, 8), np.uint8), "scales": np.ones(8, np.float32)},
        K=16, N=8, bits=4, block_size=16,
    )  # fmt: skip
    assert a.macs == 2 * 3 * 16 * 8


def test_onnx_attention_4d() -> None:
    # Q [1,2,5,8], K [1,2,7,8], V [1,2,7,4]: QKᵀ 1·2·5·7·8, AV 1·2·5·7·4, softmax 5 per score.
    a = _analyze_contrib(
        "Attention", {"q": [1, 2, 5, 8], "k": [1, 2, 7, 8], "v": [1, 2, 7, 4]}, {},
        domain="", opset=23,
    )  # fmt: skip
    assert a.macs == 2 * 5 * 7 * (8 + 4) == 840
    assert a.flops == 2 * 840 + 5 * 2 * 5 * 7


def test_contrib_attention_counts_projection_and_sdpa() -> None:
    # x [2,5,16] × W [16,48] (q, k, v of 16 each), 4 heads of 4.
    a = _analyze_contrib(
        "Attention", {"x": [2, 5, 16]},
        {"w": np.zeros((16, 48), np.float32), "bias": np.zeros(48, np.float32)}, num_heads=4,
    )  # fmt: skip
    projection = 2 * 5 * 16 * 48
    scores = 2 * 4 * 5 * 5
    assert a.macs == projection + scores * (4 + 4)
    assert a.flops == 2 * a.macs + 5 * scores


def test_contrib_multi_head_attention() -> None:
    a = _analyze_contrib(
        "MultiHeadAttention", {"q": [2, 5, 16], "k": [2, 7, 16], "v": [2, 7, 16]}, {},
        num_heads=4,
    )  # fmt: skip
    assert a.macs == 2 * 4 * 5 * 7 * (4 + 4)

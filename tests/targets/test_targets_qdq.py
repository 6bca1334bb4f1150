"""QDQ models: which MAC ops a runtime runs in int8, and what the estimate charges for the
others (targets/qdq.py). Graphs built with onnx.helper as the quantizer writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.analysis import analyze
from edgeshift.model.load import load_model
from edgeshift.targets.estimate import estimate_analysis
from edgeshift.targets.qdq import float_nodes_by_runtime, qdq_float_nodes

C, HW = 8, 16


def _qdq_conv_model(path: Path, after: str, quantized_weights: bool = True) -> Path:
    """x (uint8) -> DQ -> Conv 3x3 (int8 weights through DQ) -> Relu -> [AFTER] -> Q -> y.
    AFTER: "" (Relu straight into Q: ORT fuses a QLinearConv) or "MaxPool" (no Q/DQ between
    Relu and MaxPool, as the quantizer writes a conv block: ORT keeps the Conv float)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (C, C, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        # Straight after a Relu the quantizer's range starts at 0: zero point 0, and ORT folds
        # the Relu into the QuantizeLinear. After a MaxPool, a range of its own (zero point
        # 128): ORT's Q/DQ propagation through the MaxPool cannot fold the Relu either.
        numpy_helper.from_array(np.array(128 if after else 0, np.uint8), "yz"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], name="dq_x")]
    if quantized_weights:
        inits.append(numpy_helper.from_array(w, "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq_w"))
    else:
        inits.append(numpy_helper.from_array(w.astype(np.float32) * 0.01, "w"))
    nodes += [
        helper.make_node("Conv", ["xf", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    last, side = "r", HW
    if after == "MaxPool":
        nodes.append(helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                                      strides=[2, 2]))  # fmt: skip
        last, side = "p", HW // 2
    nodes.append(helper.make_node("QuantizeLinear", [last, "s", "yz"], ["y"], name="q_y"))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, C, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, C, side, side])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_conv_not_followed_by_quantize_runs_float_on_onnxruntime_only(tmp_path: Path) -> None:
    fused = onnx.load(_qdq_conv_model(tmp_path / "fused.onnx", "")).graph
    pooled = onnx.load(_qdq_conv_model(tmp_path / "pooled.onnx", "MaxPool")).graph
    assert qdq_float_nodes(fused, "onnxruntime") == frozenset()
    assert qdq_float_nodes(pooled, "onnxruntime") == {"conv"}
    # OpenVINO carries int8 through MaxPool (a precision-preserving op).
    assert qdq_float_nodes(pooled, "openvino") == frozenset()


def test_a_conv_the_quantizer_left_float_is_float_on_every_runtime(tmp_path: Path) -> None:
    graph = onnx.load(_qdq_conv_model(tmp_path / "m.onnx", "", quantized_weights=False)).graph
    assert qdq_float_nodes(graph, "onnxruntime") == {"conv"}
    assert qdq_float_nodes(graph, "openvino") == {"conv"}


def test_a_graph_without_quantize_has_no_float_fallbacks(tmp_path: Path) -> None:
    path = _qdq_conv_model(tmp_path / "m.onnx", "MaxPool")
    graph = onnx.load(path).graph
    del graph.node[-1]  # the QuantizeLinear: a float model with DequantizeLinear inputs
    assert qdq_float_nodes(graph, "onnxruntime") == frozenset()
    assert float_nodes_by_runtime(str(path), ["Conv", "Relu"]) == {}  # histogram: no Q
    assert float_nodes_by_runtime(None, ["QuantizeLinear"]) == {}


def test_float_fallback_convs_cost_fp32_time_at_int8(tmp_path: Path, make_target: Any,
                                                     half: Any) -> None:  # fmt: skip
    # Compute-bound toy target: fp32 peak 10, int8 40 GOP/s, half of each reached.
    target = make_target(mem_bandwidth_gbs={"value": 1e6, "source": "t"})
    path = _qdq_conv_model(tmp_path / "pooled.onnx", "MaxPool")
    analysis = analyze(load_model(path))
    conv = next(n for n in analysis.nodes if n.name == "conv")
    floats = float_nodes_by_runtime(analysis.source_path, analysis.op_histogram)
    assert floats["onnxruntime"] == {"conv"}
    as_int8 = estimate_analysis(analysis, target, precision="int8", efficiency=half)
    as_found = estimate_analysis(analysis, target, precision="int8", efficiency=half,
                                 qdq_float_nodes=floats)  # fmt: skip
    # The conv at fp32 (5 GOP/s achieved) instead of int8 (20 GOP/s); nothing else changes.
    extra_ms = conv.flops / 5e9 * 1e3 - conv.flops / 20e9 * 1e3
    assert as_found.latency_ms - as_int8.latency_ms == pytest.approx(extra_ms, rel=1e-9)
    assert any("run in float on onnxruntime" in n for n in as_found.notes)
    # At fp32 the whole model is float already: the set changes nothing.
    fp32 = estimate_analysis(analysis, target, precision="fp32", efficiency=half)
    fp32_found = estimate_analysis(analysis, target, precision="fp32", efficiency=half,
                                   qdq_float_nodes=floats)  # fmt: skip
    assert fp32_found.latency_ms == fp32.latency_ms


def test_onnxruntime_itself_says_which_convs_it_fused(tmp_path: Path) -> None:
    from edgeshift.targets.qdq import ort_float_nodes

    fused = _qdq_conv_model(tmp_path / "fused.onnx", "")
    pooled = _qdq_conv_model(tmp_path / "pooled.onnx", "MaxPool")
    assert ort_float_nodes(str(fused)) == frozenset()  # QLinearConv
    assert ort_float_nodes(str(pooled)) == {"conv"}  # float Conv on dequantized weights
    assert float_nodes_by_runtime(str(pooled), ["QuantizeLinear"])["onnxruntime"] == {"conv"}
    assert ort_float_nodes(str(tmp_path / "missing.onnx")) is None


def test_a_weight_read_by_an_int8_kernel_marks_its_node_int8() -> None:
    from edgeshift.targets.qdq import float_after_optimization

    def graph(*nodes: onnx.NodeProto) -> onnx.GraphProto:
        return helper.make_graph(list(nodes), "g", [], [])

    weights = {"conv_a": "wa", "mm_b": "wb", "conv_c": "wc"}
    optimized = graph(
        helper.make_node("QLinearConv", ["x", "s", "z", "wa", "ws", "wz", "ys", "yz"], ["y"]),
        helper.make_node("DequantizeLinear", ["wb", "s", "z"], ["wbf"]),  # float Gemm's
        helper.make_node("Gemm", ["h", "wbf"], ["o"], name="renamed_by_fusion"),
    )  # "wc" folded into a float constant: float too
    assert float_after_optimization(weights, optimized) == {"mm_b", "conv_c"}


def test_int8_matmuls_with_a_float_output_take_their_own_curve(
    make_target: Any, make_analysis: Any, half: Any
) -> None:
    import dataclasses

    from edgeshift.model.analysis import NodeCost
    from edgeshift.targets.qdq import FLOAT_OUT, float_out_after_optimization

    optimized = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "wb", "s", "s2"], ["o"]),
         helper.make_node("QLinearMatMul", ["a", "s", "z", "wc", "s", "z", "s", "z"], ["p"])],
        "g", [], [],
    )  # fmt: skip
    assert float_out_after_optimization({"mm_b": "wb", "mm_c": "wc"}, optimized) == {"mm_b"}

    # One MatMul of 64 rows (weights 256 x 256, fp32 in the QDQ graph) on a compute-bound
    # toy target whose int8 GEMM reaches 20 GOP/s, 5 GOP/s with a float output.
    target = make_target(mem_bandwidth_gbs={"value": 1e6, "source": "t"})
    node = NodeCost("mm", "MatMul", 64 * 256 * 256, 2 * 64 * 256 * 256, 64 * 256 * 4,
                    64 * 256 * 4, 256 * 256 * 4, True)  # fmt: skip
    analysis = make_analysis([node], 256 * 256, 2 * 64 * 256, 256 * 256,
                             op_histogram={"QuantizeLinear": 1, "QLinearMatMul": 1})  # fmt: skip
    curves = {"int8/gemm": ((1.0, 20.0),), "int8/gemm_float_out": ((1.0, 5.0),)}
    eff = dataclasses.replace(half, kernel_gops=curves, peak_gops={"int8": 40.0, "fp32": 10.0})
    plain = estimate_analysis(analysis, target, precision="int8", efficiency=eff)
    runs = {"onnxruntime": frozenset(), FLOAT_OUT: frozenset({"mm"})}
    float_out = estimate_analysis(analysis, target, precision="int8", efficiency=eff,
                                  qdq_float_nodes=runs)  # fmt: skip
    extra_ms = node.flops / 5e9 * 1e3 - node.flops / 20e9 * 1e3
    assert float_out.latency_ms - plain.latency_ms == pytest.approx(extra_ms, rel=1e-9)
    # Without a gemm_float_out curve (an older calibration) the GEMM curve stays.
    eff_old = dataclasses.replace(eff, kernel_gops={"int8/gemm": ((1.0, 20.0),)})
    old = estimate_analysis(analysis, target, precision="int8", efficiency=eff_old,
                            qdq_float_nodes=runs)  # fmt: skip
    assert old.latency_ms == pytest.approx(plain.latency_ms)

"""Host calibration per kernel class: how nodes are classed, how timings become figures,
the noise detector and the cache version. No wall clock: timings here are synthetic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.analysis import analyze
from edgeshift.targets import _cal_graphs as graphs
from edgeshift.targets.host import detect_host
from edgeshift.targets.roofline import kernel_class
from edgeshift.targets.schema import Calibration


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
        graphs.gemm(tmp_path / "g.onnx", 2, 8, 8, int8=True, float_out=True),
        graphs.conv_stack(tmp_path / "h.onnx", 3, 8, 4),
        graphs.conv_stack(tmp_path / "i.onnx", 3, 8, 4, int8=True),
        graphs.attention(tmp_path / "c.onnx", 2, 4, 4),
        graphs.recurrent(tmp_path / "d.onnx", "GRU", 3, 4, 4),
        graphs.conv_chain(tmp_path / "e.onnx", 3),
        graphs.matmul_chain(tmp_path / "f.onnx", 3, 4),
    ):
        onnx.checker.check_model(onnx.load(path), full_check=True)


# --- from timings to figures (synthetic timings: exact arithmetic, no clock) ---------------

CALL_US, OP_US, CONV_OP_US = 8.0, 0.5, 2.0
GOPS = {"conv_dense": 150.0, "conv_depthwise": 20.0, "conv_pointwise": 120.0, "gemm": 200.0,
        "attention": 90.0, "lstm": 40.0, "gru": 35.0, "norm": 12.0}  # fmt: skip


def _synthetic_best(prefixes: dict[str, float]) -> dict[str, float]:
    """Fastest call per benchmark as a host with the figures above (x SCALE per config)
    would give them: t = call + per-op overhead + FLOPs / speed."""
    from edgeshift.targets import _calibrate as c
    from edgeshift.targets._cal_derive import class_flops

    best: dict[str, float] = {}
    for prefix, scale in prefixes.items():
        call, op, conv = CALL_US * 1e-6, OP_US * 1e-6, CONV_OP_US * 1e-6
        for n in c.CHAIN_LENGTHS if not prefix.endswith("int8") else ():
            best[f"{prefix}/chain/{n}"] = call + n * op
            best[f"{prefix}/conv_chain/{n}"] = call + n * conv
        for cls, (_, _, _, _, sides) in c.CONV.items():
            for hw in sides:
                flops = class_flops(cls, hw * hw)
                stack = c.CONV_STACK * conv  # each class is a stack of convs
                best[f"{prefix}/{cls}/{hw * hw}"] = call + stack + flops / (GOPS[cls] * scale * 1e9)
        for m in c.GEMM_ROWS:
            stack = c.GEMM_STACK * op  # a stack of MatMuls
            best[f"{prefix}/gemm/{m}"] = call + stack + class_flops("gemm", m) / (200e9 * scale)
        if prefix.endswith("int8"):
            continue
        norm_size = c.NORM_ROWS * c.NORM_WIDTH
        norm_s = class_flops("norm", norm_size) / (GOPS["norm"] * 1e9)
        best[f"{prefix}/norm/{norm_size}"] = call + c.NORM_OPS * (op + norm_s)
        for s in c.ATTN_SEQ:
            size = c.ATTN_HEADS * s * s * c.ATTN_DIM
            softmax = 5 * size / c.ATTN_DIM / (GOPS["norm"] * 1e9)
            mm = class_flops("attention", size) / (GOPS["attention"] * 1e9)
            best[f"{prefix}/attention/{size}"] = call + 3 * op + softmax + mm
        for cls, seqs in (("lstm", c.LSTM_SEQ), ("gru", c.GRU_SEQ)):
            for s in seqs:
                best[f"{prefix}/{cls}/{s}"] = call + op + class_flops(cls, s) / (GOPS[cls] * 1e9)
    big, small, mid = 64 << 20, 256 << 10, 16 << 10
    best["copy"] = 2 * 2 * big / 10e9
    best["ew_big"] = CALL_US * 1e-6 + 2 * big / 20e9
    best["ew_small"] = CALL_US * 1e-6 + 16 * (3e-6 + 2 * small / 80e9)
    best["ew_mid"] = CALL_US * 1e-6 + 16 * (3e-6 + 2 * mid / 80e9)
    return best


def _derive(best: dict[str, float]) -> Calibration:
    from edgeshift.targets._cal_derive import figures

    host = detect_host()
    peaks = {"fp32": 400.0, "bf16": 800.0, "int8": 1600.0}
    return figures(
        best, host=host, peak_fn=peaks.get, sizes={"big": 64 << 20, "small": 256 << 10,
        "mid": 16 << 10}, rss=1 << 27, seconds=1.0, created="2026-01-01T00:00:00+00:00",
        runtime_precision={"onnxruntime/fp32": "fp32", "onnxruntime/int8": "fp32",
                           "openvino/bf16": "bf16"},
    )  # fmt: skip


def test_dispatch_is_a_least_squares_line_over_chain_lengths() -> None:
    from edgeshift.targets._cal_derive import dispatch_us
    from edgeshift.targets._calibrate import fit_line

    assert fit_line([1, 17, 33], [9.0, 17.0, 25.0]) == pytest.approx((8.5, 0.5))
    # A point off the line by noise moves the fit less than it would move two points.
    a, b = fit_line([1, 17, 33], [9.0, 17.0 * 1.1, 25.0])
    assert a == pytest.approx(8.5, rel=0.2) and b == pytest.approx(0.5, rel=0.2)
    best = {f"x/chain/{n}": (8 + 0.5 * n) * 1e-6 for n in (1, 17, 33)}
    best |= {f"x/conv_chain/{n}": (8 + 2.0 * n) * 1e-6 for n in (1, 17, 33)}
    assert dispatch_us(best, "x") == pytest.approx((8.0, 0.5, 2.0))
    assert dispatch_us(best, "y") is None  # not measured


def test_kernel_figures_recover_the_speeds_behind_the_timings() -> None:
    cal = _derive(_synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                                   "openvino/bf16": 2.0}))  # fmt: skip
    from edgeshift.targets.host import CALIBRATION_VERSION

    assert cal.version == CALIBRATION_VERSION
    for cls, gops in GOPS.items():
        curve = cal.kernel_gops[f"onnxruntime/fp32/{cls}"]
        assert list(curve.values()) == pytest.approx([gops] * len(curve)), cls
    assert cal.kernel_gops["onnxruntime/fp32/conv_dense"].keys() == {"64", "784", "3136"}
    assert cal.kernel_gops["onnxruntime/int8/gemm"]["128"] == pytest.approx(800.0)
    assert cal.kernel_gops["openvino/bf16/conv_depthwise"]["784"] == pytest.approx(40.0)
    assert "onnxruntime/int8/lstm" not in cal.kernel_gops  # int8 graphs: convs and GEMMs
    # Dispatch per runtime and precision; int8 borrows that of the float graphs it ran with.
    assert cal.call_overhead_us["onnxruntime/int8"] == pytest.approx(CALL_US)
    assert cal.op_overhead_us["openvino/bf16/conv"] == pytest.approx(CONV_OP_US)
    # The single figures older readers use are still there.
    assert cal.achieved_gops == pytest.approx({"fp32": 200.0, "bf16": 400.0, "int8": 800.0})
    assert cal.conv_gflops == pytest.approx(150.0) and cal.peak_gops["fp32"] == 400.0
    assert cal.dram_copy_gbs == pytest.approx(10.0) and cal.cache_gbs == pytest.approx(80.0)
    assert cal.op_overhead_us["parallel"] == pytest.approx(3.0)


def test_thread_speedup_is_clamped_and_fades_out_for_short_kernels() -> None:
    from edgeshift.targets._cal_derive import SERIAL_S, speedup, threaded

    assert speedup(100.0, 180.0, 2) == pytest.approx(1.8)
    assert speedup(100.0, 300.0, 2) == 2.0  # not more than the threads (noise)
    assert speedup(100.0, 80.0, 2) == pytest.approx(0.8)  # slower on two: kept
    assert speedup(100.0, 1.0, 2) == 0.25 and speedup(0.0, 50.0, 2) == 1.0
    t_ref = 100 * SERIAL_S  # the longest size, where the speed-up was measured
    times = {"big": t_ref, "mid": 10 * SERIAL_S, "tiny": SERIAL_S / 2}
    out = threaded({"big": 50.0, "mid": 40.0, "tiny": 10.0}, times, 1.8)
    assert out["big"] == pytest.approx(90.0)  # in full where it was measured
    assert out["mid"] == pytest.approx(40.0 * 1.4)  # halfway in log(time): half the gain
    assert out["tiny"] == 10.0  # too short to split
    assert threaded({"a": 5.0}, {"a": 1e-6}, 1.5) == {"a": pytest.approx(7.5)}


def test_class_figures_are_single_thread_times_the_measured_speedup() -> None:
    from edgeshift.targets._cal_derive import SERIAL_S

    best = _synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                            "openvino/bf16": 2.0})  # fmt: skip
    t_dense = best["onnxruntime/fp32/conv_dense/3136"]
    from edgeshift.targets._calibrate import CONV_STACK

    fixed = (CALL_US + CONV_STACK * CONV_OP_US) * 1e-6
    # The largest dense conv again at the host's threads, 1.6x faster net of overheads.
    best["onnxruntime/fp32/par_conv_dense/3136"] = fixed + (t_dense - fixed) / 1.6
    cal = _derive(best)
    threads, dense = detect_host().usable_cores, GOPS["conv_dense"]
    expected = min(1.6, float(threads)) if threads > 1 else 1.0
    assert cal.thread_speedup == {"onnxruntime/fp32/conv_dense": pytest.approx(expected)}
    assert cal.kernel_gops_1t["onnxruntime/fp32/conv_dense"]["3136"] == pytest.approx(dense)
    assert cal.kernel_gops["onnxruntime/fp32/conv_dense"]["3136"] == pytest.approx(dense * expected)
    small = cal.kernel_gops["onnxruntime/fp32/conv_dense"]["64"]
    t_small = best["onnxruntime/fp32/conv_dense/64"]
    assert t_small > SERIAL_S and dense <= small < dense * expected + 1e-9
    # A class without a threaded figure keeps its single-thread curve.
    assert cal.kernel_gops["onnxruntime/fp32/gemm"] == cal.kernel_gops_1t["onnxruntime/fp32/gemm"]


def test_one_thread_kernels_are_net_of_the_one_thread_dispatch() -> None:
    from edgeshift.targets._cal_derive import one_thread_dispatch

    best = {f"ort/fp32/1t_chain/{n}": (3 + 0.2 * n) * 1e-6 for n in (1, 17, 33)}
    best |= {f"ort/fp32/1t_conv_chain/{n}": (3 + 1.5 * n) * 1e-6 for n in (1, 17, 33)}
    best |= {f"ort/fp32/chain/{n}": (7 + 0.5 * n) * 1e-6 for n in (1, 17, 33)}  # all CPUs
    assert one_thread_dispatch(best, "ort/fp32", "fp32") == pytest.approx((3.0, 0.2, 1.5))
    # int8 graphs: the one-thread dispatch of the float graphs their runtime ran at.
    assert one_thread_dispatch(best, "ort/int8", "fp32") == pytest.approx((3.0, 0.2, 1.5))
    assert one_thread_dispatch(best, "ov/fp32", "fp32") is None
    # The synthetic host's kernels with a smaller one-thread dispatch: still recovered.
    synth = _synthetic_best({"onnxruntime/fp32": 1.0})
    for n in (1, 17, 33):
        synth[f"onnxruntime/fp32/1t_chain/{n}"] = synth[f"onnxruntime/fp32/chain/{n}"]
        synth[f"onnxruntime/fp32/1t_conv_chain/{n}"] = synth[f"onnxruntime/fp32/conv_chain/{n}"]
        synth[f"onnxruntime/fp32/chain/{n}"] += 4e-6  # the pool's wake-up on all CPUs
    cal = _derive(synth)
    assert cal.kernel_gops_1t["onnxruntime/fp32/gemm"]["8"] == pytest.approx(200.0)
    assert cal.call_overhead_us["onnxruntime/fp32"] == pytest.approx(CALL_US + 4.0)


def test_kernel_classes_run_on_one_thread_and_their_largest_size_also_on_all(
    tmp_path: Path,
) -> None:
    from edgeshift.targets._calibrate import Calibrator

    cal = object.__new__(Calibrator)
    cal.host = dataclasses.replace(detect_host(), usable_cores=2)
    p = tmp_path / "g.onnx"
    specs = [("gemm/8", p, {}), ("gemm/128", p, {}), ("chain/1", p, {}), ("lstm/8", p, {})]
    plan = [(what, threads) for what, _, _, threads in cal._with_threads(specs)]
    assert plan == [("gemm/8", 1), ("gemm/128", 1), ("chain/1", None), ("1t_chain/1", 1),
                    ("lstm/8", 1), ("par_gemm/128", None), ("par_lstm/8", None)]  # fmt: skip
    cal.host = dataclasses.replace(cal.host, usable_cores=1)
    assert [w for w, *_ in cal._with_threads(specs)] == [
        "gemm/8",
        "gemm/128",
        "chain/1",
        "1t_chain/1",
        "lstm/8",
    ]


def test_the_roofline_uses_the_class_curve_of_the_runtime_named() -> None:
    from edgeshift.targets.roofline import curve_value, efficiency_from_calibration

    cal = _derive(_synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                                   "openvino/bf16": 2.0}))  # fmt: skip
    cal.kernel_gops["onnxruntime/fp32/gemm"] = {"1": 50.0, "100": 250.0}
    eff = efficiency_from_calibration(cal, 2.6)
    assert eff.compute_for("conv", "fp32", kind="conv_depthwise", size=784) == pytest.approx(
        20.0 / 400.0
    )
    # GEMM by shape: linear in log(rows) between the measured sizes, flat beyond them.
    assert eff.compute_for("gemm", "fp32", kind="gemm", size=10) == pytest.approx(150 / 400)
    assert eff.compute_for("gemm", "fp32", kind="gemm", size=1000) == pytest.approx(250 / 400)
    assert curve_value(((1.0, 50.0), (100.0, 250.0)), None) == 250.0
    # int8 has no LSTM figure: its fp32 speed on that runtime, over the int8 peak.
    assert eff.compute_for("gemm", "int8", kind="lstm", size=8) == pytest.approx(40 / 1600)
    ov = eff.for_runtime("openvino")
    assert ov.compute_for("conv", "bf16", kind="conv_dense", size=64) == pytest.approx(300 / 800)
    assert ov.overheads_us("bf16", "conv") == pytest.approx((CALL_US, CONV_OP_US))
    # An unmeasured class keeps the defaults; an unknown runtime keeps the default choice.
    assert eff.compute_for("pool", "fp32", kind="pool") == eff.compute["pool"]
    assert eff.for_runtime("tensorrt") is eff


# --- the noise detector (synthetic round timings) ------------------------------------------


def test_round_spread_and_noisy_figures() -> None:
    from edgeshift.targets._calibrate import Calibrator, round_spread

    assert round_spread([1.0, 1.02, 5.0]) == pytest.approx(0.02)  # the fastest two agree
    assert round_spread([1.0]) is None
    cal = object.__new__(Calibrator)  # only the round timings matter here
    cal.per_pass = {"quiet": [2.0, 1.0, 1.01], "noisy": [1.0, 1.2, 1.5]}
    cal.calls, cal.q = {}, 0.0
    assert cal.noisy(0.03) == {"noisy": pytest.approx(0.2)}
    assert cal.best == {"quiet": 1.0, "noisy": 1.0}


def test_a_quiet_host_gets_more_rounds_within_the_budget() -> None:
    from edgeshift.targets._calibrate import more_rounds

    # 20 s opening, then 5 s a round: a seventh round ends at 55 s.
    assert more_rounds(50.0, 20.0, 6, budget_s=60.0)
    assert not more_rounds(50.0, 20.0, 6, budget_s=54.0)
    assert not more_rounds(0.0, 0.0, 0)


def test_a_one_thread_call_is_timed_by_cpu_time_unless_that_is_more() -> None:
    from edgeshift.targets._calibrate import single_thread_time

    assert single_thread_time(3e-3, 1e-3) == 1e-3  # pre-empted for 2 ms: not the kernel's
    assert single_thread_time(1e-3, 1.4e-3) == 1e-3  # another thread of ours spinning
    assert single_thread_time(1e-3, 0.0) == 1e-3  # no CPU clock tick seen: the wall time


def test_a_figure_is_a_low_quantile_of_every_call_of_every_round() -> None:
    from edgeshift.targets._calibrate import Calibrator, low_quantile

    calls = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 5.0]
    assert low_quantile(calls, 0.0) == 1.0  # the fastest call
    assert low_quantile(calls, 0.2) == pytest.approx(1.2)  # numpy's linear quantile
    assert low_quantile(calls, 0.5) == pytest.approx(1.5)
    # One lucky call moves the minimum all the way, the quantile by one step between calls.
    assert low_quantile([0.5, *calls], 0.0) == 0.5
    assert low_quantile([0.5, *calls], 0.2) == pytest.approx(1.12)
    with pytest.raises(ValueError, match="no times"):
        low_quantile([], 0.2)
    cal = object.__new__(Calibrator)
    cal.q = 0.5
    cal.per_pass = {"a": [1.0, 3.0], "copy": [2.0, 4.0, 3.0]}  # per-round figures
    cal.calls = {"a": [1.0, 2.0, 3.0, 4.0, 5.0]}  # every call of both rounds, pooled
    assert cal.best == {"a": 3.0, "copy": 3.0}  # copy has no calls: its rounds
    assert cal.figures_at(0.0) == {"a": 1.0, "copy": 2.0}
    assert cal.figures_at(-1) == {"a": 1.0, "copy": 2.0}  # the best round's own figure
    # A speed-up run (all CPUs, wall time) keeps its best round rather than pooled calls.
    cal.per_pass["x/par_gemm/128"] = [2.5, 2.0, 4.0]
    cal.calls["x/par_gemm/128"] = [1.9, 2.0, 2.1, 2.5, 2.6, 4.0, 4.1, 4.2, 4.3]
    assert cal.best["x/par_gemm/128"] == 2.0 and cal.figures_at(0.0)["x/par_gemm/128"] == 1.9


def test_unconfirmed_figures_are_measured_again_until_two_rounds_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeshift.targets._calibrate import Calibrator

    cal = object.__new__(Calibrator)
    cal.per_pass = {"steady": [1.0, 1.01], "busy": [1.0, 1.5]}
    later = {"busy": iter([1.3, 1.02])}  # a neighbour, then a quiet moment
    asked: list[set[str]] = []

    def fake_round(progress: bool = False, only: set[str] | None = None) -> None:
        assert only is not None
        asked.append(set(only))
        for key in only:
            cal.per_pass[key].append(next(later[key]))

    monkeypatch.setattr(cal, "run_pass", fake_round)
    assert cal.remeasure(rounds=5) == 2
    assert asked == [{"busy"}, {"busy"}] and cal.noisy(0.03) == {}
    # A figure that never settles is left noisy once the extra rounds are spent.
    cal.per_pass = {"busy": [1.0, 1.5]}
    later = {"busy": iter([1.4, 1.3, 1.2])}
    assert cal.remeasure(rounds=3) == 3 and set(cal.noisy(0.03)) == {"busy"}
    # Nor past the calibration's time budget.
    assert cal.remeasure(rounds=3, deadline=0.0) == 0


# --- cache versioning -----------------------------------------------------------------------


def test_a_cache_of_the_previous_layout_is_measured_again(
    cache_dir: Path, make_calibration: Any
) -> None:
    from edgeshift.targets.host import CALIBRATION_VERSION, cache_path, load_calibration

    host = detect_host()
    assert host.cache_key.startswith(f"v{CALIBRATION_VERSION}|") and CALIBRATION_VERSION >= 7
    old = make_calibration(key=host.cache_key.replace(f"v{CALIBRATION_VERSION}|", "v6|", 1))
    path = cache_path(host)
    path.parent.mkdir(parents=True)
    path.write_text(old.model_dump_json())  # as if v6 had written it where this version looks
    assert load_calibration(host) is None


def test_a_pinned_file_of_the_previous_layout_still_reads(
    tmp_path: Path, make_calibration: Any
) -> None:
    from edgeshift.targets.host import load_calibration_file

    doc = json.loads(make_calibration().model_dump_json())
    for field in ("version", "kernel_gops", "peak_gops"):
        doc.pop(field)  # what a version-6 file holds
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"format": "edgeshift-calibration/1", "clock_ghz": 2.0,
                                "calibration": doc}))  # fmt: skip
    pinned = load_calibration_file(path)
    assert pinned.calibration.version == 6 and pinned.calibration.kernel_gops == {}
    eff = pinned.efficiency()  # no curves: the saturation fits of that layout
    assert eff.compute_for("gemm", "fp32", 8.0, kind="gemm", size=8.0) == pytest.approx(0.25)


# --- dense convs by channel width (calibration version 9) ----------------------------------


@pytest.mark.parametrize(
    ("cin", "cout", "k", "expected"),
    [(8, 8, 3, 8.0), (32, 32, 3, 32.0), (128, 128, 3, 128.0), (1, 32, 3, 32**0.5),
     (64, 64, 5, (64 * 25 / 9 * 64) ** 0.5)],
)  # fmt: skip
def test_a_dense_conv_has_the_width_its_channels_give(
    tmp_path: Path, cin: int, cout: int, k: int, expected: float
) -> None:
    from edgeshift.targets.roofline import conv_width

    path = _strided_conv(tmp_path / "c.onnx", cin, cout, k, 1, 1)
    conv = next(n for n in analyze(path).nodes if n.op_type == "Conv")
    assert conv_width(conv) == pytest.approx(expected)
    relu = dataclasses.replace(conv, op_type="Relu")
    assert conv_width(relu) is None


def test_width_benchmarks_become_a_curve_by_channels() -> None:
    from edgeshift.targets import _calibrate as c
    from edgeshift.targets._cal_derive import class_flops

    best = _synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                            "openvino/bf16": 2.0})  # fmt: skip
    speeds = {8: 40.0, 32: 150.0, 128: 300.0}  # GOP/s at each width
    fixed = (CALL_US + c.WIDTH_STACK * CONV_OP_US) * 1e-6  # a stack of convs
    for width in c.CONV_WIDTHS:
        t = fixed + class_flops("conv_width", width) / (speeds[width] * 1e9)
        best[f"onnxruntime/fp32/conv_width/{width}"] = t
    # Each conv of a stack does the MACs of the 32-channel curve's 28x28 conv (a stack too).
    stack = class_flops("conv_dense", 784)
    assert [class_flops("conv_width", w) for w in c.CONV_WIDTHS] == [stack] * 3
    cal = _derive(best)
    curve = cal.kernel_gops["onnxruntime/fp32/conv_width"]
    assert curve == pytest.approx({str(w): g for w, g in speeds.items()})


def test_a_narrow_dense_conv_is_slower_and_a_wide_one_faster_than_the_curve() -> None:
    from edgeshift.targets.roofline import efficiency_from_calibration

    cal = _derive(_synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                                   "openvino/bf16": 2.0}))  # fmt: skip
    base = efficiency_from_calibration(cal, 2.6)
    dense = base.compute_for("conv", "fp32", kind="conv_dense", size=784)
    assert dense == pytest.approx(150.0 / 400.0)
    # No width curve (a version-8 file): the width changes nothing.
    assert base.compute_for("conv", "fp32", None, "conv_dense", 784, 8.0) == dense
    cal.kernel_gops["onnxruntime/fp32/conv_width"] = {"8": 50.0, "32": 100.0, "128": 200.0}
    eff = efficiency_from_calibration(cal, 2.6)
    narrow = eff.compute_for("conv", "fp32", None, "conv_dense", 784, 8.0)
    assert narrow == pytest.approx(dense * 0.5)
    assert eff.compute_for("conv", "fp32", None, "conv_dense", 784, 64.0) == pytest.approx(
        dense * 1.5  # halfway between 32 and 128 in log(width)
    )
    assert eff.compute_for("conv", "fp32", None, "conv_dense", 784, 4.0) == pytest.approx(
        dense * 0.5  # flat beyond the narrowest width measured
    )
    # Other kinds of conv are not scaled.
    pw = eff.compute_for("conv", "fp32", None, "conv_pointwise", 784, 8.0)
    assert pw == base.compute_for("conv", "fp32", kind="conv_pointwise", size=784)


def test_a_batched_recurrent_layer_gains_what_the_gemm_gains_from_rows() -> None:
    from edgeshift.targets.roofline import efficiency_from_calibration

    cal = _derive(_synthetic_best({"onnxruntime/fp32": 1.0, "onnxruntime/int8": 4.0,
                                   "openvino/bf16": 2.0}))  # fmt: skip
    cal.kernel_gops["onnxruntime/fp32/gemm"] = {"1": 20.0, "8": 120.0, "32": 200.0}
    cal.kernel_gops["onnxruntime/fp32/lstm"] = {"8": 40.0, "32": 60.0}
    eff = efficiency_from_calibration(cal, 2.6)
    # Batch 1: the curve at steps; 32 steps at batch 8 (size 256): 32 steps, each a GEMM of
    # 8 rows, 6x what one row gets.
    assert eff.compute_for("gemm", "fp32", None, "lstm", 32) == pytest.approx(60.0 / 400)
    assert eff.compute_for("gemm", "fp32", None, "lstm", 256) == pytest.approx(60.0 / 400)
    batched = eff.compute_for("gemm", "fp32", None, "lstm", 256, batch=8)
    assert batched == pytest.approx(60.0 * 6 / 400)
    # 8 steps at batch 4: the step curve at 8, the GEMM gain 2/3 of the way in log(rows) to 8.
    gain = (20.0 + (120.0 - 20.0) * 2 / 3) / 20.0
    assert eff.compute_for("gemm", "fp32", None, "lstm", 32, batch=4) == pytest.approx(
        40.0 * gain / 400
    )
    # Not a recurrent layer: the batch changes nothing.
    assert eff.compute_for("gemm", "fp32", None, "gemm", 8, batch=8) == pytest.approx(120 / 400)


def test_the_width_factor_takes_out_what_the_positions_alone_do() -> None:
    from edgeshift.targets.roofline import CONV_WIDTH_POSITIONS, width_factor_curve

    assert CONV_WIDTH_POSITIONS == {8: 12544, 32: 784, 128: 49}  # equal MACs per conv
    dense = ((49.0, 100.0), (784.0, 200.0), (12544.0, 200.0))  # small outputs run slow
    # 128 channels at 7x7 reach what 32 channels reach at 7x7: no gain from width itself.
    widths = ((8.0, 50.0), (32.0, 200.0), (128.0, 100.0))
    factors = width_factor_curve(widths, dense)
    assert [w for w, _ in factors] == [8.0, 32.0, 128.0]
    assert [f for _, f in factors] == pytest.approx([0.25, 1.0, 1.0])

"""The estimate: hand-computed roofline cases, fit checks, monotonic sanity, cost and energy."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import make_mlp

from edgeshift.errors import ShapeError, TargetError
from edgeshift.model.analysis import analyze
from edgeshift.targets.catalog import get_target, load_catalog
from edgeshift.targets.compare import compare
from edgeshift.targets.estimate import SECONDS_PER_YEAR, estimate, estimate_analysis
from edgeshift.targets.roofline import DEFAULT_EFFICIENCY, op_class
from edgeshift.targets.schema import Quantity

# The toy case by hand: t_compute = 2e6 FLOP / (10 GFLOP/s * 0.5) = 400 µs;
# t_memory = 408000 B / (1 GB/s * 0.5) = 816 µs -> memory bound; + 10 µs op + 100 µs call.
TOY_LATENCY_S = 816e-6 + 10e-6 + 100e-6


def test_roofline_by_hand(make_target: Any, half: Any, one_gemm: Any) -> None:
    e = estimate_analysis(one_gemm, make_target(), efficiency=half, precision="fp32")
    assert e.latency_ms == pytest.approx(TOY_LATENCY_S * 1e3, rel=1e-9)
    assert e.overhead_ms == pytest.approx(0.1)
    assert e.throughput_items_s == pytest.approx(1 / TOY_LATENCY_S)
    (row,) = e.breakdown
    assert (row.op_class, row.nodes, row.flops, row.bytes, row.bound) == (
        "gemm", 1, 2_000_000, 408_000, "memory",
    )  # fmt: skip
    assert row.ms == pytest.approx((816e-6 + 10e-6) * 1e3)
    # Energy: active power for the busy time (utilization 1): 3 W * latency.
    assert e.energy_j == pytest.approx(3.0 * TOY_LATENCY_S)
    # Owned: 100 USD over one year, plus energy at 0.15 USD/kWh.
    usd = 100 / SECONDS_PER_YEAR * TOY_LATENCY_S + 3.0 * TOY_LATENCY_S / 3.6e6 * 0.15
    assert e.usd_per_million == pytest.approx(usd * 1e6)
    # RAM: weights + peak activations + runtime overhead.
    assert e.ram_required_bytes == 400_000 + 8000 + 1024 and e.fits


def test_compute_bound_when_bandwidth_is_plenty(make_target: Any, half: Any, one_gemm: Any) -> None:
    fast_mem = make_target(mem_bandwidth_gbs={"value": 100.0, "source": "t"})
    e = estimate_analysis(one_gemm, fast_mem, efficiency=half, precision="fp32")
    # 400 µs compute > 8.16 µs memory.
    assert e.latency_ms == pytest.approx((400e-6 + 10e-6 + 100e-6) * 1e3)
    assert e.breakdown[0].bound == "compute"


def test_utilization_and_rented_cost(make_target: Any, half: Any, one_gemm: Any) -> None:
    rented = make_target(price={"usd_per_hour": {"value": 3.6, "source": "t"}})
    e = estimate_analysis(one_gemm, rented, efficiency=half, precision="fp32", utilization=0.5)
    # Busy 1/throughput per item, idle as long again: (3-1) W * t + 1 W * 2t.
    assert e.energy_j == pytest.approx(2 * TOY_LATENCY_S + 1.0 * 2 * TOY_LATENCY_S)
    # 3.6 USD/h = 0.001 USD/s over the wall time per item (2t); energy is in the price.
    assert e.usd_per_million == pytest.approx(0.001 * 2 * TOY_LATENCY_S * 1e6)


def test_int8_halves_nothing_but_scales_bytes(make_target: Any, half: Any, one_gemm: Any) -> None:
    e = estimate_analysis(one_gemm, make_target(), efficiency=half, precision="int8")
    # Bytes / 4 -> 204 µs memory; compute 2e6 / (40e9 * 0.5) = 100 µs.
    assert e.latency_ms == pytest.approx((204e-6 + 10e-6 + 100e-6) * 1e3)
    assert e.ram_required_bytes == 100_000 + 2000 + 1024
    assert any("quantized variant" in n for n in e.notes)


def test_unsupported_precision_does_not_fit(make_target: Any, half: Any, one_gemm: Any) -> None:
    e = estimate_analysis(one_gemm, make_target(), efficiency=half, precision="bf16")
    assert not e.fits and "does not run bf16" in e.fit_reason
    assert math.isinf(e.latency_ms) and e.throughput_items_s == 0


def test_fused_activation_costs_nothing(
    make_target: Any, half: Any, make_analysis: Any, make_gemm: Any
) -> None:
    gemm = make_gemm(1_000_000, 4000, 4000, 400_000)
    relu = make_gemm(0, 4000, 4000, 0, op="Relu")
    alone = make_analysis([gemm], 400_000, 8000, 100_000)
    fused = make_analysis([gemm, relu], 400_000, 8000, 100_000)
    t = make_target()
    a = estimate_analysis(alone, t, efficiency=half, precision="fp32")
    b = estimate_analysis(fused, t, efficiency=half, precision="fp32")
    assert a.latency_ms == pytest.approx(b.latency_ms)


def test_op_classes() -> None:
    assert [op_class(o) for o in ("Conv", "MatMul", "Softmax", "Relu", "MaxPool", "Reshape", "Transpose")] == [
        "conv", "gemm", "norm", "elementwise", "pool", "free", "movement",
    ]  # fmt: skip


def _mlp_path(tmp_path: Path, sizes: tuple[int, ...]) -> Path:
    model, _ = make_mlp(sizes=sizes)
    path = tmp_path / f"mlp_{'_'.join(map(str, sizes))}.onnx"
    onnx.save(model, path)
    return path


TARGETS = sorted(load_catalog())


@settings(max_examples=15, deadline=None)
@given(
    w1=st.integers(1, 2048),
    extra=st.integers(0, 2048),
    batch=st.sampled_from([1, 4, 32]),
)
def test_bigger_model_never_faster(tmp_path_factory: Any, w1: int, extra: int, batch: int) -> None:
    d = tmp_path_factory.mktemp("mono")
    small = analyze(_mlp_path(d, (64, w1, 10)), batch=batch)
    big = analyze(_mlp_path(d, (64, w1 + extra, 10)), batch=batch)
    for tid in TARGETS:
        t = get_target(tid)
        a = estimate_analysis(small, t, efficiency=DEFAULT_EFFICIENCY)
        b = estimate_analysis(big, t, efficiency=DEFAULT_EFFICIENCY)
        assert a.precision == b.precision
        assert b.latency_ms >= a.latency_ms * (1 - 1e-12), tid
        assert b.ram_required_bytes >= a.ram_required_bytes


@pytest.mark.parametrize("tid", TARGETS)
def test_more_bandwidth_never_slower(tmp_path: Path, tid: str) -> None:
    # M = 1 GEMVs over 4 MiB of weights: memory-bound on servers and GPUs; on MCUs and small
    # Arm cores fp32 compute at M = 1 can be the tighter bound, and then bandwidth is moot.
    analysis = analyze(_mlp_path(tmp_path, (1024, 1024, 1024)), batch=1)
    t = get_target(tid)
    bw = t.mem_bandwidth_gbs.value
    faster = t.model_copy(update={"mem_bandwidth_gbs": Quantity(value=2 * bw, derived="test")})
    a = estimate_analysis(analysis, t, efficiency=DEFAULT_EFFICIENCY, precision="fp32")
    b = estimate_analysis(analysis, faster, efficiency=DEFAULT_EFFICIENCY, precision="fp32")
    assert b.latency_ms <= a.latency_ms
    if any(r.bound == "memory" for r in a.breakdown if r.op_class == "gemm"):
        assert b.latency_ms < a.latency_ms
    else:
        assert b.latency_ms == pytest.approx(a.latency_ms) and t.tier in ("mcu", "edge")


def test_mcu_refuses_a_model_too_large_for_ram(tmp_path: Path) -> None:
    analysis = analyze(_mlp_path(tmp_path, (64, 40_000, 10)), batch=1)
    e = estimate_analysis(analysis, get_target("stm32f4"), precision="fp32")
    assert not e.fits
    # MCU RAM = activations + runtime (weights live in flash); flash = weights + code.
    assert e.ram_required_bytes == analysis.peak_activation_bytes + 8 * 1024
    assert e.ram_available_bytes == 192 * 1024
    assert e.flash_required_bytes == analysis.weight_bytes + 100 * 1024
    assert "needs" in e.fit_reason and "192.0 KiB" in e.fit_reason
    assert "flash" in e.fit_reason and "1.0 MiB" in e.fit_reason


def test_mcu_fits_a_small_model(tmp_path: Path) -> None:
    analysis = analyze(_mlp_path(tmp_path, (64, 128, 10)), batch=1)
    e = estimate_analysis(analysis, get_target("stm32h7"), precision="int8")
    assert e.fits and e.fit_reason.startswith("fits:")
    assert e.flash_required_bytes is not None and e.flash_required_bytes < 2 << 20


@pytest.mark.parametrize(
    ("tid", "expected"),
    [
        ("rpi4", "fp32"),
        ("rpi5", "fp16"),
        ("aws-m7i-2xlarge", "bf16"),
        ("stm32f4", "fp32"),
        ("aws-g4dn-t4", "fp16"),
    ],
)
def test_default_precision_is_the_fastest_usable(tmp_path: Path, tid: str, expected: str) -> None:
    analysis = analyze(_mlp_path(tmp_path, (64, 128, 10)), batch=1)
    assert estimate_analysis(analysis, get_target(tid)).precision == expected


@pytest.fixture
def error_model(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A synthetic measured error (x0.8-1.25 on ONNX Runtime fp32), instead of the shipped one."""
    from edgeshift.targets.interval import ErrorSample, fit_error_model

    estimate_module = sys.modules["edgeshift.targets.estimate"]  # the package re-exports estimate()

    ratios = [0.8, 0.8, *[1.0] * 15, 1.25, 1.25]  # n = 19: the bounds are the 2nd and 18th
    model = fit_error_model(
        [ErrorSample(f"m{i}", "onnxruntime", "fp32", 1.0, r) for i, r in enumerate(ratios)],
        run={"host": "test cpu"},
    )
    monkeypatch.setattr(estimate_module, "load_error_model", lambda: model)
    return model


def test_gpu_interval_is_widened_and_says_so(
    tmp_path: Path, calibrated_host: Any, error_model: Any
) -> None:
    e = estimate(_mlp_path(tmp_path, (64, 128, 10)), "aws-g6-l4")
    assert e.interval_ms is not None and e.interval_coverage == 0.8
    assert e.interval_ms[1] / e.latency_ms == pytest.approx(1.25 * 3.0)
    assert e.interval_ms[0] / e.latency_ms == pytest.approx(0.8 / 3.0)
    assert "x3 wider: a target of tier gpu" in e.interval_basis


def test_unresolved_dim_needs_shape(embedding_path: Path) -> None:
    with pytest.raises(ShapeError, match=r"input_ids\[1\] \(seq\).*--shape"):
        estimate(embedding_path, "rpi5")
    e = estimate(embedding_path, "rpi5", shapes={"seq": (32,)}, batch=4)
    assert e.batch == 4 and math.isfinite(e.latency_ms)


def test_bad_inputs(mlp_path: Path) -> None:
    with pytest.raises(TargetError, match="rpi5"):
        estimate(mlp_path, "rpi-5")
    with pytest.raises(ShapeError, match="--batch"):
        estimate(mlp_path, "rpi5", batch=0)
    with pytest.raises(TargetError, match="unknown precision"):
        estimate(mlp_path, "rpi5", precision="fp8")


def test_host_estimate_uses_the_cached_calibration(
    mlp_path: Path, calibrated_host: Any, error_model: Any
) -> None:
    e = estimate(mlp_path, "host", precision="fp32")
    # On the host the interval is the measured error itself, unwidened.
    assert e.interval_ms == (pytest.approx(e.latency_ms * 0.8), pytest.approx(e.latency_ms * 1.25))
    assert "wider" not in e.interval_basis and "test cpu" in e.interval_basis
    assert e.ram_required_bytes >= calibrated_host.runtime_overhead_bytes
    # A catalog target carries the host's efficiencies over: a wider interval.
    rpi = estimate(mlp_path, "rpi5")
    assert rpi.interval_ms is not None and "x2 wider: a target of tier edge" in rpi.interval_basis
    assert "no host calibration" not in rpi.interval_basis


def test_without_calibration_the_interval_is_wider(
    mlp_path: Path, cache_dir: Path, error_model: Any
) -> None:
    e = estimate(mlp_path, "rpi5")
    assert e.interval_ms is not None and e.interval_ms[1] / e.latency_ms == pytest.approx(5.0)
    assert "no host calibration" in e.interval_basis


def test_compare_ranks_by_cost_among_slo_meeting(tmp_path: Path, cache_dir: Path) -> None:
    path = _mlp_path(tmp_path, (256, 1024, 10))
    c = compare(path, ["aws-g4dn-t4", "stm32f4", "rpi5", "aws-c7g-2xlarge"], slo_ms=5.0)
    ok = [e for e in c.rows if c.meets_slo[e.target_id]]
    assert [e.target_id for e in c.rows[: len(ok)]] == [e.target_id for e in ok]
    costs = [e.usd_per_million for e in ok]
    assert costs == sorted(costs)
    assert not c.meets_slo["stm32f4"]  # 1 MiB of weights does not fit in 1 MiB of flash + code
    assert ok[0].target_id in c.answer and "USD per million" in c.answer
    assert "GPU" in c.answer or "CPU" in c.answer


def test_compare_bad_inputs(mlp_path: Path) -> None:
    with pytest.raises(TargetError, match="no targets"):
        compare(mlp_path, [])
    with pytest.raises(TargetError, match="slo"):
        compare(mlp_path, ["rpi5"], slo_ms=0)
    with pytest.raises(TargetError, match="did you mean"):
        compare(mlp_path, ["rpi5", "nvidia-t4"])


def test_dispatch_costs_scale_with_clock_and_size(
    make_target: Any, half: Any, make_analysis: Any, make_gemm: Any
) -> None:
    # No catalog overheads: the host's are carried over, scaled by clock (1 GHz -> 2 GHz
    # halves them); ops moving >= 16 KiB pay the thread pool's join (5 µs, not 1 µs).
    eff = dataclasses.replace(
        half, call_overhead_us={"fp32": 10.0}, op_overhead_us={"fp32": 1.0, "parallel": 5.0}
    )
    t = make_target(
        call_overhead_us=None, op_overhead_us=None, clock_ghz={"value": 2.0, "source": "t"}
    )
    fast_mem = {"value": 1e6, "source": "t"}  # bandwidth so high the bytes cost ~nothing
    t = t.model_copy(update={"mem_bandwidth_gbs": Quantity(**fast_mem)})
    small = make_analysis([make_gemm(0, 1000, 1000, 0, op="Add")], 0, 2000, 0)
    big = make_analysis([make_gemm(0, 10_000, 10_000, 0, op="Add")], 0, 20_000, 0)
    a = estimate_analysis(small, t, efficiency=eff, precision="fp32")
    b = estimate_analysis(big, t, efficiency=eff, precision="fp32")
    assert a.latency_ms == pytest.approx((10.0 + 1.0) / 2 / 1e3, rel=1e-3)
    assert b.latency_ms == pytest.approx((10.0 + 5.0) / 2 / 1e3, rel=1e-3)


def test_a_guessed_dim_is_named_in_the_shape_hint(tmp_path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeshift.errors import ShapeError
    from edgeshift.targets.estimate import estimate

    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "tokens", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "tokens", 4])], [w],
    )  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ShapeError, match=r"--shape tokens=128\)"):
        estimate(path, "rpi5")

"""From microbenchmark times to calibration figures: pure arithmetic, no clock.

Every time is a low quantile of a benchmark's calls (seconds). Per runtime and precision:

- dispatch: chains of 1, 17 and 33 tiny MatMuls (and Convs) give ``t(n) = call + n * op``
  by least squares over n;
- kernel classes: GOP/s = FLOPs / (t - call - per-op overhead), FLOPs counted as
  ``model/op_costs.py`` counts them, at every size measured on ONE thread; times the class's
  speed-up at the host's threads, measured at its largest size and taken down to none for
  kernels of ``SERIAL_S`` or less (:func:`threaded`): the curve the roofline reads;
- memory: DRAM copy and elementwise bandwidth, cache bandwidth and the fixed cost of a
  parallel op, as before (ONNX Runtime fp32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from edgeshift.targets import _calibrate as c
from edgeshift.targets.roofline import STREAM_FRACTION
from edgeshift.targets.schema import Calibration

# Legacy single-figure precisions and the runtime each was measured on.
_LEGACY = {"fp32": ("onnxruntime", "fp32"), "bf16": ("openvino", "bf16"),
           "int8": ("onnxruntime", "int8")}  # fmt: skip


# A kernel this short on one thread gains nothing from more threads (the pool's wake-up
# costs what splitting saves); between it and the size the speed-up was measured at, the
# gain grows linearly in log(time).
SERIAL_S = 10e-6


def speedup(gops_1t: float, gops_threads: float, threads: int) -> float:
    """How many times faster the kernel ran at THREADS than on one, within [0.25, THREADS]
    (more threads can be slower: a runtime's pool on a busy host)."""
    if gops_1t <= 0 or gops_threads <= 0:
        return 1.0
    return min(max(gops_threads / gops_1t, 0.25), float(max(threads, 1)))


def threaded(
    curve_1t: Mapping[str, float], times_1t: Mapping[str, float], factor: float
) -> dict[str, float]:
    """The class curve at the host's threads: each single-thread figure times FACTOR (the
    speed-up measured at the longest size), in full from that size's time up, none at
    ``SERIAL_S`` or less, linear in log(time) in between. TIMES_1T: size -> seconds."""
    t_ref = max(times_1t.values())
    out = {}
    for size, gops in curve_1t.items():
        t = times_1t[size]
        if t >= t_ref:
            w = 1.0
        elif t <= SERIAL_S or t_ref <= SERIAL_S:
            w = 0.0
        else:
            w = math.log(t / SERIAL_S) / math.log(t_ref / SERIAL_S)
        out[size] = gops * (1.0 + (factor - 1.0) * w)
    return out


_CLASSES = ("conv_width", "gemm", "gemm_float_out", "attention", "lstm", "gru", "norm")


def class_flops(cls: str, size: int) -> float:
    """FLOPs of one calibration graph of CLS at SIZE (as op_costs counts them), not counting
    the attention graph's Softmax (its time is taken off with the norm figure)."""
    if cls in c.CONV:  # a stack of CONV_STACK convs
        cin, cout, k, groups, _ = c.CONV[cls]
        return c.CONV_STACK * 2.0 * cout * (cin // groups) * k * k * size
    if cls == "conv_width":  # a stack of 3x3 convs, SIZE channels, width_side(SIZE)^2 outputs
        return c.WIDTH_STACK * 2.0 * size * size * 9 * c.width_side(size) ** 2
    if cls in ("gemm", "gemm_float_out"):  # a stack of GEMM_STACK MatMuls
        return c.GEMM_STACK * 2.0 * size * c.GEMM_K * c.GEMM_N
    if cls == "attention":
        return 2.0 * 2 * size  # QK^T and AV, SIZE MACs each
    if cls in ("lstm", "gru"):
        gates, eltwise = {"lstm": (4, 13), "gru": (3, 11)}[cls]
        macs = size * gates * c.RNN_HIDDEN * (c.RNN_IN + c.RNN_HIDDEN)
        return 2.0 * macs + size * eltwise * c.RNN_HIDDEN
    if cls == "norm":
        return 7.0 * size  # one LayerNormalization
    raise ValueError(f"no FLOP count for calibration class {cls!r}")


def dispatch_us(best: Mapping[str, float], prefix: str) -> tuple[float, float, float] | None:
    """(call, per-op, per-Conv-op) µs from PREFIX's chains, or None when not measured."""
    ns = [n for n in c.CHAIN_LENGTHS if f"{prefix}/chain/{n}" in best]
    if len(ns) < 2:
        return None
    t = [best[f"{prefix}/chain/{n}"] for n in ns]
    call, op = c.fit_line([float(n) for n in ns], t)
    # The intercept extrapolates: keep it within the one-node graph's time.
    call = min(max(call, 0.3 * t[0]), t[0])
    conv_ns = [n for n in c.CHAIN_LENGTHS if f"{prefix}/conv_chain/{n}" in best]
    conv_op = op
    if len(conv_ns) >= 2:
        conv_t = [best[f"{prefix}/conv_chain/{n}"] for n in conv_ns]
        conv_op = c.fit_line([float(n) for n in conv_ns], conv_t)[1]
    return call * 1e6, max(op, 0.0) * 1e6, max(conv_op, 0.0) * 1e6


def one_thread_dispatch(
    best: Mapping[str, float], prefix: str, runtime_precision: str
) -> tuple[float, float, float] | None:
    """(call, per-op, per-Conv-op) µs of PREFIX's chains run on one thread ("1t_chain/<n>"),
    else of the float graphs its runtime ran at (int8); None when neither was measured."""
    runtime = prefix.split("/")[0]
    for source in (prefix, f"{runtime}/{runtime_precision}"):
        chains = {k.replace(f"{source}/1t_", f"{source}/", 1): t for k, t in best.items()
                  if k.startswith(f"{source}/1t_")}  # fmt: skip
        found = dispatch_us(chains, source)
        if found is not None:
            return found
    return None


def kernel_curves(
    best: Mapping[str, float], prefix: str, call_us: float, op_us: float, conv_op_us: float
) -> dict[str, dict[str, float]]:
    """ "<class>" -> {size: GOP/s} for the benchmarks under PREFIX ("<runtime>/<precision>")."""
    found: dict[str, dict[int, float]] = {}
    for key, t in best.items():
        if not key.startswith(prefix + "/"):
            continue
        cls, _, size_text = key[len(prefix) + 1 :].rpartition("/")
        if cls in c.CONV or cls in _CLASSES:
            found.setdefault(cls, {})[int(size_text)] = t
    curves: dict[str, dict[str, float]] = {}

    def gops(flops: float, t_net: float, t_all: float) -> float:
        # Noise can leave less than the overheads: a kernel takes at least a tenth of its call.
        return flops / max(t_net, 0.1 * t_all) / 1e9

    call_s, op_s, conv_s = call_us * 1e-6, op_us * 1e-6, conv_op_us * 1e-6
    norm_gops = None
    if "norm" in found:
        norm_size, t = next(iter(found["norm"].items()))
        per_op = (t - call_s) / c.NORM_OPS
        norm_gops = gops(class_flops("norm", norm_size), per_op - op_s, per_op)
        curves["norm"] = {str(norm_size): norm_gops}
    for cls, points in found.items():
        if cls == "norm":
            continue
        curve = {}
        for size, t in sorted(points.items()):
            fixed = call_s + op_s
            if cls in c.CONV or cls == "conv_width":  # stacks of convs
                fixed = call_s + c.CONV_STACK * conv_s
            if cls in ("gemm", "gemm_float_out"):  # stacks of MatMuls
                fixed = call_s + c.GEMM_STACK * op_s
            if cls == "attention":  # two MatMuls and a Softmax of 5 FLOPs per score
                fixed = call_s + 3 * op_s
                if norm_gops:
                    fixed += 5 * size / c.ATTN_DIM / (norm_gops * 1e9)
            curve[str(size)] = gops(class_flops(cls, size), t - fixed, t)
        curves[cls] = curve
    return curves


def derive(cal: Any, q: float) -> Calibration:
    """The Calibration from a Calibrator's calls at quantile Q (see :func:`figures`)."""
    from edgeshift.targets.host import HostInfo

    host = cal.host
    assert isinstance(host, HostInfo)
    runtime_precision: dict[str, str] = {}
    for b in cal.benches:
        parts = b.key.split("/")
        if len(parts) == 4:  # not a memory benchmark
            runtime_precision.setdefault("/".join(parts[:2]), b.runtime_precision)
    return figures(
        cal.figures_at(q), host=host, peak_fn=cal.peak_fn, runtime_precision=runtime_precision,
        sizes={"big": cal.big, "small": cal.small, "mid": cal.mid}, rss=max(cal.rss or [0]),
        seconds=cal.seconds, created=c.now_iso(),
    )  # fmt: skip


def figures(
    best: Mapping[str, float],
    *,
    host: Any,
    peak_fn: Callable[[str], float | None],
    runtime_precision: Mapping[str, str],
    sizes: Mapping[str, int],
    rss: int,
    seconds: float,
    created: str,
) -> Calibration:
    """The calibration's figures from BEST (benchmark -> time, s). RUNTIME_PRECISION
    says at which precision each "<runtime>/<precision>" ran its graphs: an int8 config takes
    its dispatch costs from the float config its runtime ran at. Kernel classes are timed on
    one thread ("<prefix>/<class>/<size>") and their largest size again at the host's
    threads ("<prefix>/par_<class>/<size>"); without the latter a class keeps its
    single-thread curve (a one-CPU host)."""
    call_us: dict[str, float] = {}
    op_us: dict[str, float] = {}
    kernels: dict[str, dict[str, float]] = {}
    single: dict[str, dict[str, float]] = {}
    speedups: dict[str, float] = {}
    measured = sorted(runtime_precision, key=lambda p: p.endswith("/int8"))  # float ones first
    for prefix in measured:
        runtime = prefix.split("/")[0]
        found = dispatch_us(best, prefix)
        if found is None:  # int8: the same runtime's float dispatch at its precision
            found = dispatch_us(best, f"{runtime}/{runtime_precision[prefix]}")
        if found is None:
            continue
        call, op, conv = found
        call_us[prefix], op_us[prefix], op_us[f"{prefix}/conv"] = call, op, conv
        par = {k.replace(f"{prefix}/par_", f"{prefix}/", 1): t for k, t in best.items()
               if k.startswith(f"{prefix}/par_")}  # fmt: skip
        par_curves = kernel_curves(par, prefix, call, op, conv)
        # One-thread kernels are net of the one-thread dispatch, timed the same way.
        one = one_thread_dispatch(best, prefix, runtime_precision[prefix]) or found
        for cls, curve in kernel_curves(best, prefix, *one).items():
            key = f"{prefix}/{cls}"
            single[key] = curve
            size, at = next(iter(par_curves.get(cls, {}).items()), (None, 0.0))
            if size is None or size not in curve:
                kernels[key] = dict(curve)
                continue
            speedups[key] = speedup(curve[size], at, host.usable_cores)
            times = {s: best[f"{key}/{s}"] for s in curve}
            kernels[key] = threaded(curve, times, speedups[key])
    if "onnxruntime/fp32" not in call_us:
        raise RuntimeError("ONNX Runtime fp32 was not measured: no calibration without it")
    for legacy, (runtime, precision) in _LEGACY.items():
        prefix = f"{runtime}/{precision}"
        if prefix in call_us:
            call_us[legacy], op_us[legacy] = call_us[prefix], op_us[prefix]
            op_us[f"{legacy}_conv"] = op_us[f"{prefix}/conv"]
    achieved = {
        legacy: max(kernels[f"{rt}/{p}/gemm"].values())
        for legacy, (rt, p) in _LEGACY.items()
        if f"{rt}/{p}/gemm" in kernels
    }
    conv_gflops = max(kernels["onnxruntime/fp32/conv_dense"].values())
    memory = _memory(best, sizes, call_us["fp32"], op_us["fp32"])
    op_us["parallel"] = memory.pop("parallel_us")

    # Flags cannot always tell a CPU generation apart under a hypervisor (a Zen 5 may read
    # as a Zen 4): when GEMM beats 90% of the flag-based peak, the FMA width was wrong.
    flag = {p: peak_fn(p) or 0.0 for p in ("fp32", "bf16", "int8")}
    factor = c.width_factor(flag, achieved)
    peaks = {p: v * factor for p, v in flag.items() if v > 0}
    efficiency = {
        "gemm": achieved["fp32"] / peaks["fp32"],
        "conv": conv_gflops / peaks["fp32"],
        # numpy copies on one thread; the runtime's Add may use all cores and go faster.
        "memory": memory["elementwise"]
        / (max(memory["copy"], memory["elementwise"]) / STREAM_FRACTION),
    }
    for p, g in achieved.items():
        if peaks.get(p):
            efficiency[f"gemm_{p}"] = g / peaks[p]
    from edgeshift.targets.host import CALIBRATION_VERSION

    return Calibration(
        version=CALIBRATION_VERSION,
        key=host.cache_key,
        created=created,
        cpu_model=host.cpu_model,
        threads=host.usable_cores,
        runtime_versions=host.runtime_versions,
        achieved_gops=achieved,
        conv_gflops=conv_gflops,
        half_rows={},  # the per-class curves replace the saturation fits
        dram_copy_gbs=memory["copy"],
        elementwise_gbs=memory["elementwise"],
        cache_gbs=memory["cache"],
        call_overhead_us=call_us,
        op_overhead_us=op_us,
        runtime_overhead_bytes=int(rss),
        efficiency=efficiency,
        peak_corrected=factor != 1.0,
        kernel_gops=kernels,
        kernel_gops_1t=single,
        thread_speedup=speedups,
        peak_gops=peaks,
        seconds=seconds,
    )


def _memory(
    best: Mapping[str, float], sizes: Mapping[str, int], call_us: float, op_us: float
) -> dict[str, float]:
    big, small, mid = sizes["big"], sizes["small"], sizes["mid"]
    call_s = call_us * 1e-6
    out = {"copy": 2 * 2 * big / best["copy"] / 1e9}  # read + write of 2 x big bytes
    out["elementwise"] = 2 * big / max(best["ew_big"] - call_s, 1e-9) / 1e9
    # Two sizes of cache-resident Add: t_op = fixed + bytes / cache bandwidth. The fixed part
    # of an op big enough to be split over threads (pool wake-up and join) is several times
    # the dispatch of a tiny one.
    t_small = (best["ew_small"] - call_s) / 16
    t_mid = (best["ew_mid"] - call_s) / 16
    tiny_s = op_us * 1e-6
    if t_small > t_mid > 0:
        out["cache"] = 2 * (small - mid) / (t_small - t_mid) / 1e9
        parallel_s = max(t_mid - 2 * mid / (out["cache"] * 1e9), tiny_s)
    else:  # noise hid the size dependence: all of it is bandwidth
        out["cache"] = 2 * small / max(t_small - tiny_s, 1e-9) / 1e9
        parallel_s = tiny_s
    out["parallel_us"] = parallel_s * 1e6
    return out

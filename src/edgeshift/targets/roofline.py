"""Op classes and the efficiency factors the roofline applies to a target's peak numbers.

Efficiencies come from the host calibration when one is cached; otherwise from the defaults
below (typical figures for tuned CPU kernels, stated as assumptions in every estimate).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Any

from edgeshift.targets.schema import Calibration

# Sustained copy bandwidth reached by STREAM-like loops, as a fraction of the theoretical
# DRAM bandwidth: ~0.7-0.8 on servers and SoCs. Used to turn a measured copy bandwidth into
# the host's theoretical figure and back for the catalog targets.
STREAM_FRACTION = 0.75

# Ops moving at least this many bytes get split over the runtime's threads, and pay the
# thread pool's wake-up and join (measured as ``op_overhead_us["parallel"]``).
PARALLEL_MIN_BYTES = 16 << 10

OP_CLASSES = ("conv", "gemm", "norm", "elementwise", "pool", "movement", "free")

_CONV = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_GEMM = {
    "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "Einsum",
    "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention",
}  # fmt: skip
_NORM = {
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "MeanVarianceNormalization", "SkipLayerNormalization", "RMSNormalization",
    "SimplifiedLayerNormalization", "LpNormalization", "Softmax", "LogSoftmax", "Hardmax",
}  # fmt: skip
_POOL = {
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum", "TopK",
}  # fmt: skip
# Views and shape plumbing: runtimes fold or alias them, so they cost neither time nor a
# kernel launch.
_FREE = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant",
    "ConstantOfShape", "Dropout", "Range",
}  # fmt: skip
_MOVEMENT = {
    "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Scatter",
    "ScatterND", "ScatterElements", "Pad", "Tile", "Expand", "Cast", "CastLike", "DepthToSpace",
    "SpaceToDepth", "NonZero", "OneHot", "EyeLike", "Trilu", "ReverseSequence", "Compress",
    "Resize", "Upsample", "Where",
}  # fmt: skip


def op_class(op_type: str) -> str:
    """The roofline class of an ONNX op type (unknown ops count as elementwise)."""
    if op_type in _CONV:
        return "conv"
    if op_type in _GEMM:
        return "gemm"
    if op_type in _NORM:
        return "norm"
    if op_type in _POOL:
        return "pool"
    if op_type in _FREE:
        return "free"
    if op_type in _MOVEMENT:
        return "movement"
    return "elementwise"


# Kernel classes: the regimes the host calibration measures separately, because runtimes
# reach very different fractions of peak in them (a depthwise conv does ~9 MACs per output
# element and is bound by its loads; a 1x1 conv is a GEMM; an LSTM is a chain of GEMVs).
KERNEL_CLASSES = (
    "conv_dense", "conv_depthwise", "conv_pointwise", "gemm", "attention", "lstm", "gru", "norm",
)  # fmt: skip
_INT8_WEIGHTS = {
    "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QGemm",
}  # fmt: skip
_INT8_OUT = {"QLinearConv", "QLinearMatMul"}  # uint8/int8 outputs (ConvInteger: int32)
_INT8_IN = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
# Kernel areas a depthwise conv has (1-D and square 2-D, odd sizes): its reduction depth.
_DEPTHWISE_DEPTHS = {3, 5, 7, 9, 25, 49}


def _itemsize(op_type: str, stored: str, int8_ops: set[str]) -> int:
    if op_type in int8_ops:
        return 1
    return 2 if stored == "fp16" else 4  # QDQ graphs: the Conv/MatMul itself is float


def kernel_class(node: Any, stored: str = "fp32") -> tuple[str, float | None]:
    """(kernel class, size) of a node (``model.analysis.NodeCost``) of a model stored at
    STORED; the size is what the class's efficiency curve is indexed by: rows (M of a GEMM,
    output positions of a Conv, steps x batch of an RNN), MACs of an attention MatMul (no
    weights), None where nothing applies. Ops outside the calibrated classes keep their
    :func:`op_class`. Works from the node's byte counts alone (see ``_conv_kind``)."""
    op, cls = node.op_type, op_class(node.op_type)
    if cls not in ("gemm", "conv"):
        return ("norm" if cls == "norm" else cls), None
    w_elems = node.weight_bytes / _itemsize(op, stored, _INT8_WEIGHTS)
    rows = node.macs / w_elems if node.macs and w_elems >= 1 else None
    if op == "LSTM":
        return "lstm", rows
    if op in ("GRU", "RNN"):
        return "gru", rows
    if cls == "gemm":
        if op in ("Attention", "MultiHeadAttention") or rows is None:
            # Both operands are activations: QK^T and AV of attention (or a packed block).
            return "attention", float(node.macs) if node.macs else None
        return "gemm", rows
    return _conv_kind(node, stored, w_elems, rows)


def _conv_dims(node: Any, stored: str) -> tuple[float, float, float, float] | None:
    """(depth K, output channels M, output positions NP, input elements per position) of a
    Conv from MACs and byte counts (see :func:`_conv_kind`); None when they do not add up."""
    out_elems = node.output_bytes / _itemsize(node.op_type, stored, _INT8_OUT | {"ConvInteger"})
    if node.op_type == "ConvInteger":
        out_elems = node.output_bytes / 4  # int32 accumulators
    in_elems = node.input_bytes / _itemsize(node.op_type, stored, _INT8_IN)
    w_item = _itemsize(node.op_type, stored, _INT8_WEIGHTS)
    w_elems = node.weight_bytes / w_item
    if not node.macs or out_elems < 1 or in_elems < 1 or w_elems < 1:
        return None
    depth = node.macs / out_elems
    channels = w_elems / depth
    for extra in (0.0, 4.0, 9.0):  # no bias; a float/int32 bias; QLinear scale, zero point, bias
        m = node.weight_bytes / (w_item * depth + extra)
        if abs(m - round(m)) < 1e-6 and round(m) >= 1 and out_elems % round(m) == 0:
            channels = float(round(m))
            break
    positions = out_elems / max(channels, 1.0)
    return depth, channels, positions, in_elems / positions


def _conv_kind(
    node: Any, stored: str, w_elems: float, rows: float | None
) -> tuple[str, float | None]:
    """Dense, depthwise or pointwise, from MACs and byte counts (a NodeCost has no weight
    shape): depth K = MACs / output elements = C/groups * kernel area; M output channels from
    the weights (K x M, with or without a bias of M); positions NP = outputs / M; input
    elements / NP = C * stride^2. Depthwise: K is a kernel area and the input has (at least)
    as many channels as the output. Pointwise: K / (C * stride^2) < 1.5, i.e. kernel area 1
    (a 3x3 at stride 2 still gives 2.25). The size returned is NP (the bias left out)."""
    dims = _conv_dims(node, stored)
    if dims is None:
        return "conv_dense", rows
    depth, channels, positions, in_per_position = dims
    if round(depth) in _DEPTHWISE_DEPTHS and in_per_position >= 0.9 * channels:
        return "conv_depthwise", positions
    if depth / in_per_position < 1.5:
        return "conv_pointwise", positions
    return "conv_dense", positions


def conv_width(node: Any, stored: str = "fp32") -> float | None:
    """The channel width of a dense Conv as the calibration's ``conv_width`` graphs index it
    (3x3, C -> C channels: K = 9 C, M = C): sqrt(K / 9 x M), the geometric mean of its input
    channels (for a 3x3 kernel) and output channels. None: not a Conv, or unknown."""
    if op_class(node.op_type) != "conv":
        return None
    dims = _conv_dims(node, stored)
    if dims is None:
        return None
    depth, channels, _, _ = dims
    return math.sqrt(depth / 9.0 * channels)


# The channel width the dense-conv curve was measured at (``_calibrate.CONV["conv_dense"]``),
# and the calibration's width graphs: channels -> output positions, the same MACs per conv
# at every width (``_calibrate`` builds them from this table).
CONV_DENSE_WIDTH = 32.0
CONV_WIDTH_POSITIONS = {8: 112 * 112, 32: 28 * 28, 128: 7 * 7}


def width_factor_curve(widths: Curve, dense: Curve) -> Curve:
    """(width, factor) points: each width graph's GOP/s over the dense curve's at the same
    output positions, relative to the 32-channel point. Dividing by the dense curve takes
    out what the positions alone do (a 128-channel graph at 7x7 outputs is slow because
    7x7 is small, not because 128 channels are)."""
    ratio = {
        w: gops / curve_value(dense, CONV_WIDTH_POSITIONS.get(int(w), 784.0)) for w, gops in widths
    }
    ref = ratio.get(CONV_DENSE_WIDTH) or 1.0
    return tuple((w, r / ref) for w, r in sorted(ratio.items()))


Curve = tuple[tuple[float, float], ...]  # (size, GOP/s) points, sizes ascending


def curve_value(curve: Curve, size: float | None) -> float:
    """GOP/s at SIZE on a measured curve: linear in log(size) between points, flat beyond
    the ends; the largest size's figure when SIZE is unknown."""
    if size is None or size >= curve[-1][0]:
        return curve[-1][1]
    if size <= curve[0][0]:
        return curve[0][1]
    i = bisect.bisect_right([x for x, _ in curve], size)
    (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    f = (math.log(size) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + f * (y1 - y0)


# What a precision runs on when the estimate names no runtime (as the calibration measured).
DEFAULT_RUNTIME = {"fp32": "onnxruntime", "int8": "onnxruntime", "bf16": "openvino",
                   "fp16": "openvino"}  # fmt: skip


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak that each op class reaches, and the fixed costs, at a reference clock.

    Where the host calibration measured a kernel class (:data:`KERNEL_CLASSES`) at the
    precision, its curve of achieved GOP/s over size, divided by the host's peak, is the
    efficiency. Otherwise GEMM and Conv saturate with problem size:
    ``compute[cls] * rows / (rows + half_rows)`` where rows is M of a GEMM or the output
    positions of a Conv (MACs / weight elements).
    """

    compute: dict[str, float]  # op class -> achieved / peak compute when saturated (fp32)
    half_rows: dict[str, float]  # "gemm_fp32", "conv_fp32", "gemm_bf16", ...: rows at half speed
    gemm_by_precision: dict[str, float]  # saturated GEMM achieved / peak, where measured
    memory: float  # achieved elementwise bandwidth / theoretical DRAM bandwidth
    cache_speedup: float  # cache-resident bandwidth / DRAM-resident bandwidth (>= 1)
    call_overhead_us: dict[str, float]  # per precision (fp32 always), at reference_clock_ghz
    op_overhead_us: dict[str, float]  # per executed node, per precision ("<p>_conv": convs)
    reference_clock_ghz: float
    measured: bool  # True when it comes from a host calibration
    # "<precision>/<kernel class>" -> measured curve, for the runtime chosen (for_runtime)
    kernel_gops: dict[str, Curve] = field(default_factory=dict)
    peak_gops: dict[str, float] = field(default_factory=dict)  # the host's, per precision
    # runtime -> its own kernel_gops / call / op overheads (what for_runtime selects from)
    by_runtime: dict[str, tuple[dict[str, Curve], dict[str, float], dict[str, float]]] = field(
        default_factory=dict
    )

    def for_runtime(self, runtime: str) -> Efficiency:
        """The figures RUNTIME reached on the host (unchanged when it was not measured)."""
        if runtime not in self.by_runtime:
            return self
        kernels, call, op = self.by_runtime[runtime]
        return replace(
            self,
            kernel_gops=kernels,
            call_overhead_us={**self.call_overhead_us, **call},
            op_overhead_us={**self.op_overhead_us, **op},
        )

    def kernel_efficiency(
        self,
        kind: str,
        precision: str,
        size: float | None,
        width: float | None = None,
        batch: int = 1,
    ) -> float | None:
        """Measured GOP/s of kernel class KIND at SIZE over the host's peak at PRECISION;
        a precision the runtime was not measured at borrows its fp32 speed. None: not measured.
        A dense conv of channel WIDTH (:func:`conv_width`) gets the factor its width reached
        over 32 channels on the same runtime and precision (:func:`width_factor_curve`),
        where measured.
        A recurrent layer at BATCH > 1 (SIZE = steps x batch) runs its steps one after the
        other, each a GEMM of BATCH rows: the curve at SIZE / BATCH steps (measured at batch
        1) times what the runtime's GEMM gains from 1 row to BATCH rows."""
        found = (
            f"{precision}/{kind}" if f"{precision}/{kind}" in self.kernel_gops else f"fp32/{kind}"
        )
        curve = self.kernel_gops.get(found)
        peak = self.peak_gops.get(precision, 0.0)
        if not curve or peak <= 0:
            return None
        gemm = self.kernel_gops.get(found.replace(kind, "gemm"))
        if kind in ("lstm", "gru") and batch > 1 and size is not None and gemm:
            gain = max(1.0, curve_value(gemm, batch) / curve_value(gemm, 1.0))
            return min(1.0, curve_value(curve, size / batch) * gain / peak)
        gops = curve_value(curve, size)
        widths = self.kernel_gops.get(found.replace(kind, "conv_width"))
        if kind == "conv_dense" and width is not None and widths:
            gops *= curve_value(width_factor_curve(widths, curve), width)
        return min(1.0, gops / peak)

    def compute_for(
        self,
        cls: str,
        precision: str,
        rows: float | None = None,
        kind: str | None = None,
        size: float | None = None,
        width: float | None = None,
        batch: int = 1,
    ) -> float:
        if kind is not None:
            measured = self.kernel_efficiency(kind, precision, size, width, batch)
            if measured is not None and measured > 0:
                return measured
        base = self.compute[cls]
        if cls not in ("gemm", "conv"):
            return base
        if precision != "fp32" and precision in self.gemm_by_precision:
            # Conv at another precision gains what GEMM gained on the host.
            fp32 = self.gemm_by_precision.get("fp32", self.compute["gemm"])
            base *= self.gemm_by_precision[precision] / fp32
        half = self.half_rows.get(f"{cls}_{precision}", self.half_rows.get(f"{cls}_fp32", 0.0))
        if rows is None or half <= 0:
            return base
        return base * rows / (rows + half)

    def overheads_us(
        self, precision: str, cls: str = "gemm", nbytes: float = 0.0
    ) -> tuple[float, float]:
        """(per call, per op of class CLS moving NBYTES) µs at the reference clock for
        PRECISION's runtime."""
        call = self.call_overhead_us.get(precision, self.call_overhead_us["fp32"])
        op = self.op_overhead_us.get(precision, self.op_overhead_us["fp32"])
        if cls.startswith("conv"):
            conv = self.op_overhead_us.get("fp32_conv", op)
            op = self.op_overhead_us.get(f"{precision}_conv", conv)
        if nbytes >= PARALLEL_MIN_BYTES:
            op = max(op, self.op_overhead_us.get("parallel", 0.0))
        return call, op


# Assumptions when no calibration is cached: tuned BLAS reaches ~60% of peak on mid-size
# GEMMs (half of that at M = 8), direct/im2col conv ~40%; vector ops with transcendental
# math ~10% of FMA peak.
DEFAULT_EFFICIENCY = Efficiency(
    compute={
        "gemm": 0.6,
        "conv": 0.4,
        "norm": 0.1,
        "elementwise": 0.1,
        "pool": 0.1,
        "movement": 0.1,
        "free": 1.0,
    },
    half_rows={"gemm_fp32": 8.0, "conv_fp32": 32.0},
    gemm_by_precision={},
    memory=0.6,
    cache_speedup=3.0,
    call_overhead_us={"fp32": 10.0},
    op_overhead_us={"fp32": 1.0},
    reference_clock_ghz=3.0,
    measured=False,
)


def efficiency_from_calibration(cal: Calibration, host_clock_ghz: float) -> Efficiency:
    eff = cal.efficiency
    compute = dict(DEFAULT_EFFICIENCY.compute)
    compute.update({k: v for k, v in eff.items() if k in compute})
    by_precision = {k.removeprefix("gemm_"): v for k, v in eff.items() if k.startswith("gemm_")}
    by_runtime = runtime_figures(cal)
    # Without a runtime named: each precision on the runtime the calibration ran it on.
    kernels: dict[str, Curve] = {}
    for rt, (curves, _, _) in by_runtime.items():
        kernels.update(
            {k: c for k, c in curves.items() if DEFAULT_RUNTIME.get(k.split("/")[0]) == rt}
        )
    return Efficiency(
        compute=compute,
        half_rows=dict(cal.half_rows),
        gemm_by_precision=by_precision,
        memory=eff.get("memory", DEFAULT_EFFICIENCY.memory),
        cache_speedup=max(1.0, cal.cache_gbs / max(cal.elementwise_gbs, 1e-9)),
        call_overhead_us={k: v for k, v in cal.call_overhead_us.items() if "/" not in k},
        op_overhead_us={k: v for k, v in cal.op_overhead_us.items() if "/" not in k},
        reference_clock_ghz=host_clock_ghz,
        measured=True,
        kernel_gops=kernels,
        peak_gops=dict(cal.peak_gops),
        by_runtime=by_runtime,
    )


def runtime_figures(
    cal: Calibration,
) -> dict[str, tuple[dict[str, Curve], dict[str, float], dict[str, float]]]:
    """runtime -> ("<precision>/<class>" curves, call overheads, op overheads keyed as the
    Efficiency keys them: "<precision>", "<precision>_conv") from a calibration's
    "<runtime>/<precision>/<class>" figures."""
    curves: dict[str, dict[str, Curve]] = {}
    calls: dict[str, dict[str, float]] = {}
    ops: dict[str, dict[str, float]] = {}
    for key, points in cal.kernel_gops.items():
        rt, _, rest = key.partition("/")
        pts = sorted((float(size), gops) for size, gops in points.items() if gops > 0)
        if rest and pts:
            curves.setdefault(rt, {})[rest] = tuple(pts)
    for source, into in ((cal.call_overhead_us, calls), (cal.op_overhead_us, ops)):
        for key, us in source.items():
            parts = key.split("/")
            if len(parts) >= 2:
                into.setdefault(parts[0], {})["_".join(parts[1:])] = us
    runtimes = sorted(set(curves) | set(calls) | set(ops))
    return {rt: (curves.get(rt, {}), calls.get(rt, {}), ops.get(rt, {})) for rt in runtimes}

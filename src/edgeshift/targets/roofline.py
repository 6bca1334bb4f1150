"""Op classes and the efficiency factors the roofline applies to a target's peak numbers.

Efficiencies come from the host calibration when one is cached; otherwise from the defaults
below (typical figures for tuned CPU kernels, stated as assumptions in every estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak that each op class reaches, and the fixed costs, at a reference clock.

    GEMM and Conv saturate with problem size: ``compute[cls] * rows / (rows + half_rows)``
    where rows is M of a GEMM or the output positions of a Conv (MACs / weight elements).
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

    def compute_for(self, cls: str, precision: str, rows: float | None = None) -> float:
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
        if cls == "conv":
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
    return Efficiency(
        compute=compute,
        half_rows=dict(cal.half_rows),
        gemm_by_precision=by_precision,
        memory=eff.get("memory", DEFAULT_EFFICIENCY.memory),
        cache_speedup=max(1.0, cal.cache_gbs / max(cal.elementwise_gbs, 1e-9)),
        call_overhead_us=dict(cal.call_overhead_us),
        op_overhead_us=dict(cal.op_overhead_us),
        reference_clock_ghz=host_clock_ghz,
        measured=True,
    )

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
    """Fractions of peak that each op class reaches, and the fixed costs, at a reference clock."""

    compute: dict[str, float]  # op class -> achieved / peak compute
    gemm_by_precision: dict[str, float]  # GEMM achieved / peak per precision, where measured
    memory: float  # achieved elementwise bandwidth / theoretical DRAM bandwidth
    cache_speedup: float  # cache-resident bandwidth / DRAM-resident bandwidth (>= 1)
    call_overhead_us: float  # per inference call, at reference_clock_ghz
    op_overhead_us: float  # per executed node, at reference_clock_ghz
    reference_clock_ghz: float
    measured: bool  # True when it comes from a host calibration

    def compute_for(self, cls: str, precision: str) -> float:
        base = self.compute[cls]
        if cls not in ("gemm", "conv") or precision == "fp32":
            return base
        if precision not in self.gemm_by_precision:
            return base
        # Conv at another precision gains what GEMM gained on the host.
        fp32 = self.gemm_by_precision.get("fp32", self.compute["gemm"])
        return base * self.gemm_by_precision[precision] / fp32


# Assumptions when no calibration is cached: tuned BLAS reaches ~60% of peak on mid-size
# GEMMs, direct/im2col conv ~40%; vector ops with transcendental math ~10% of FMA peak.
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
    gemm_by_precision={},
    memory=0.6,
    cache_speedup=3.0,
    call_overhead_us=20.0,
    op_overhead_us=3.0,
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
        gemm_by_precision=by_precision,
        memory=eff.get("memory", DEFAULT_EFFICIENCY.memory),
        cache_speedup=max(1.0, cal.cache_gbs / max(cal.elementwise_gbs, 1e-9)),
        call_overhead_us=cal.call_overhead_us,
        op_overhead_us=cal.op_overhead_us,
        reference_clock_ghz=host_clock_ghz,
        measured=True,
    )

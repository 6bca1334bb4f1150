"""The tolerance policy: how close another CPU must come to x86, by precision (pure).

fp32 runs the same float graph, so only the order of floating-point operations may differ
(NEON/SVE vs AVX kernels): it must agree to ``FP32_RTOL`` of the output's range. A quantized
or reduced-precision variant (int8, bf16, fp16) may round differently per ISA (dot-product vs
VNNI accumulation, requantization), so it is held to the accuracy budget it was chosen
under: its own metric, with its own ``max_drop``, measured against its own x86 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeshift.verify.agreement import OutputAgreement

# Measured: ORT and OpenVINO fp32 on arm64 (QEMU, NEON/SVE kernels) vs x86 AVX-512 on the zoo
# stayed below 1e-6 of the output range; 1e-4 leaves room for deeper graphs (longer sums).
FP32_RTOL = 1e-4
# Without an artifact's own budget (a plain quantized .onnx): the goal.
DEFAULT_MIN_TOP1_PCT = 99.5
DEFAULT_MIN_COSINE = 0.999
FLOAT_PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class Tolerance:
    """What one output must meet. ``metric`` is the artifact's own metric name, or None."""

    precision: str
    metric: str | None = None
    max_drop: float | None = None  # the artifact's budget, in the metric's unit
    metric_output: str | None = None  # the output the metric reads

    @property
    def exact_float(self) -> bool:
        return self.precision in FLOAT_PRECISIONS

    def describe(self) -> str:
        if self.exact_float:
            return f"fp32: max error <= {FP32_RTOL:g} of the output's range"
        if self.metric in ("top1", "cosine", "rmse", "max-abs") and self.max_drop is not None:
            return f"{self.precision}: the artifact's budget ({self.metric} drop <= {self.max_drop:.4g})"
        return (
            f"{self.precision}: top-1 >= {DEFAULT_MIN_TOP1_PCT}% or cosine >= {DEFAULT_MIN_COSINE}"
        )


def judge(agreement: OutputAgreement, tolerance: Tolerance) -> tuple[bool, str]:
    """(passed, the criterion with the measured figure) for one output."""
    a = agreement
    if tolerance.exact_float:
        ok = a.max_rel_error <= FP32_RTOL
        return ok, f"rel error {a.max_rel_error:.3g} {'<=' if ok else '>'} {FP32_RTOL:g}"
    own = tolerance.metric_output in (None, a.name) and tolerance.max_drop is not None
    drop = tolerance.max_drop if tolerance.max_drop is not None else 0.0
    if own and tolerance.metric == "top1" and a.top1_agreement_pct is not None:
        need = 100.0 - drop
        ok = a.top1_agreement_pct >= need
        return ok, f"top-1 {a.top1_agreement_pct:.2f}% {'>=' if ok else '<'} {need:.2f}%"
    if own and tolerance.metric == "cosine":
        need = 1.0 - drop
        ok = a.cosine_mean >= need
        return ok, f"cosine {a.cosine_mean:.6f} {'>=' if ok else '<'} {need:.6f}"
    if own and tolerance.metric == "rmse":
        ok = a.rms_error <= drop
        return ok, f"rmse {a.rms_error:.3g} {'<=' if ok else '>'} {drop:.3g}"
    if own and tolerance.metric == "max-abs":
        ok = a.max_abs_error <= drop
        return ok, f"max-abs {a.max_abs_error:.3g} {'<=' if ok else '>'} {drop:.3g}"
    if a.top1_agreement_pct is not None:
        ok = a.top1_agreement_pct >= DEFAULT_MIN_TOP1_PCT
        sign = ">=" if ok else "<"
        return ok, f"top-1 {a.top1_agreement_pct:.2f}% {sign} {DEFAULT_MIN_TOP1_PCT}%"
    ok = a.cosine_mean >= DEFAULT_MIN_COSINE
    return ok, f"cosine {a.cosine_mean:.6f} {'>=' if ok else '<'} {DEFAULT_MIN_COSINE}"

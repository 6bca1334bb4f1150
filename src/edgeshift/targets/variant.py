"""What an estimate assumes: the precision a model file holds, the precision and runtime an
estimate defaults to on a target (on the host: what ``bench`` runs), precision aliases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeshift.targets.schema import PRECISION_PREFERENCE, Target

_INT8_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
}  # fmt: skip


def stored_precision(analysis: Any) -> str:
    """The precision the model file holds: int8 (quantized ops), fp16, or fp32."""
    if any(op in _INT8_OPS for op in analysis.op_histogram):
        return "int8"
    if analysis.params and analysis.weight_bytes / analysis.params < 3:
        return "fp16"
    return "fp32"


def usable_precisions(stored: str) -> tuple[str, ...]:
    """Precisions a runtime can run the stored model at without new calibration data."""
    if stored == "int8":
        return ("int8", "fp32")  # a quantized model can also run dequantized
    if stored == "fp16":
        return ("fp16", "fp32")
    return ("fp32", "fp16", "bf16")  # float casts happen at load time (OpenVINO, TensorRT)


def choose_precision(target: Target, stored: str) -> str:
    """The fastest precision both sides allow: highest peak, ties broken int8 > fp16 > bf16."""
    usable = [
        p for p in PRECISION_PREFERENCE if p in target.precisions and p in usable_precisions(stored)
    ]
    if not usable:
        return "fp32"
    return max(usable, key=lambda p: (target.peak(p), -PRECISION_PREFERENCE.index(p)))


def default_precision(target: Target, stored: str, manifest: Mapping[str, Any] | None) -> str:
    """What runs when the user names no precision: on the host, what ``bench`` runs (the
    artifact's recorded precision, else the stored graph on ONNX Runtime); elsewhere the
    fastest precision both sides allow (:func:`choose_precision`)."""
    if target.id == "host":
        recorded = str((manifest or {}).get("precision") or "")
        if recorded:
            return normalize_target_precision(recorded)
        return stored if stored in target.precisions else "fp32"
    return choose_precision(target, stored)


def runtime_for(target: Target, precision: str, manifest: Mapping[str, Any] | None) -> str:
    """The runtime an estimate of PRECISION on TARGET assumes: the artifact's, where the target
    has it; on the host ONNX Runtime, or OpenVINO for bf16/fp16 (as the calibration measured)."""
    recorded = (manifest or {}).get("backend")
    if target.id == "host":
        if recorded in target.runtimes:
            return str(recorded)
        return "openvino" if precision in ("bf16", "fp16") else "onnxruntime"
    if recorded in target.runtimes:
        return str(recorded)
    if precision in ("bf16", "fp16") and "openvino" in target.runtimes:
        return "openvino"
    return target.runtimes[0] if target.runtimes else "unknown"


def normalize_target_precision(precision: str) -> str:
    from edgeshift.errors import TargetError
    from edgeshift.targets.schema import PRECISIONS

    aliases = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16",
               "half": "fp16", "bfloat16": "bf16", "i8": "int8", "u8": "int8"}  # fmt: skip
    p = aliases.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise TargetError(f"unknown precision {precision!r} — use one of {', '.join(PRECISIONS)}")
    return p

"""OpenVINO int8 via NNCF post-training quantization of the ONNX graph.

NNCF writes a QDQ ONNX model (so the artifact stays ONNX: `inspect` reads it, OpenVINO runs the
QDQ pairs as int8 kernels). Transformers get NNCF's transformer preset (SmoothQuant, mixed
symmetric/asymmetric). Recovery keeps nodes in float through NNCF's ignored scope.

The settings are a search dimension (:class:`NNCFSettings`): when the first build misses the
budget, :meth:`OpenVINONNCFInt8.alternatives` tries NNCF's other presets before any layer is
kept in float:

- SmoothQuant migrates activation outliers into the weights using per-channel maxima from the
  calibration set; with the few dozen samples an eval set spares those maxima are noisy, and on
  MiniLM (12 calibration sentences) it cost 0.03 cosine where plain int8 lost 0.007. So a
  transformer tries a milder alpha (0.5, full search only), then no SmoothQuant.
- Other models try the ``mixed`` preset (asymmetric activations: a ReLU-free or shifted
  activation range wastes half of a symmetric int8 grid), then the slower, more exact bias
  correction (``fast_bias_correction=False``).
- Last, the float ops (those NNCF leaves unquantized: LayerNorm, Softmax, GELU, ...) at fp32
  instead of bf16: the int8 kernels are the same, the float ones lose bf16's 8-bit mantissa.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx

from edgeshift.optimize.recipes import BuildContext, Recipe, Variant, build_failure

# NNCF quantizes these on CPU; recovery ranks them.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def unknown_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of MODEL that NNCF's ONNX backend has no metatype for (it passes them through
    unquantized, and they are the first suspects when it fails)."""
    from nncf.common.graph.operator_metatypes import UnknownMetatype
    from nncf.onnx.graph.metatypes.onnx_metatypes import ONNX_OPERATION_METATYPES

    ops = sorted({n.op_type for n in model.graph.node})
    lookup = ONNX_OPERATION_METATYPES.get_operator_metatype_by_op_name
    return [op for op in ops if lookup(op) is UnknownMetatype]


def dequantized_readers(qdq_path: Path, source: onnx.ModelProto) -> list[str]:
    """Nodes of SOURCE that read a DequantizeLinear in the QDQ model at QDQ_PATH (those NNCF
    quantized), in SOURCE's graph order."""
    model = onnx.load(str(qdq_path), load_external_data=False)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    readers = {
        n.name
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(i in dequantized for i in n.input)
    }
    return [n.name for n in source.graph.node if n.name in readers]


@dataclass(frozen=True)
class NNCFSettings:
    """One setting of nncf.quantize, and the precision OpenVINO runs the float ops at."""

    smooth_quant_alpha: float | None = None  # None: NNCF's default; < 0: SmoothQuant off
    preset: str | None = None  # None: NNCF's per-model-type default; "performance" / "mixed"
    fast_bias_correction: bool = True
    float_ops: str = "bf16"  # fp32 when the CPU has no bf16

    @property
    def tag(self) -> str:
        """Tells the files of settings apart (float_ops shares the NNCF build)."""
        parts = []
        if self.smooth_quant_alpha is not None:
            parts.append("nosq" if self.smooth_quant_alpha < 0 else f"sq{self.smooth_quant_alpha}")
        if self.preset is not None:
            parts.append(self.preset)
        if not self.fast_bias_correction:
            parts.append("bc")
        return "".join(f"-{p}" for p in parts)


class OpenVINONNCFInt8(Recipe):
    name = "openvino-int8"
    family = "openvino_nncf_int8"
    backend = "openvino"
    precision = "int8"
    quantized = True
    op_types = QUANTIZED_OPS

    def __init__(self, settings: NNCFSettings | None = None) -> None:
        self.settings = settings or NNCFSettings()
        self.tag = self.settings.tag

    def alternatives(self, ctx: BuildContext) -> list[Recipe]:
        s = self.settings
        if ctx.is_transformer:
            # SmoothQuant is part of NNCF's transformer preset only.
            steps = [] if ctx.quick else [replace(s, smooth_quant_alpha=0.5)]
            steps.append(replace(s, smooth_quant_alpha=-1.0))
        else:
            steps = [replace(s, preset="mixed")]
            if not ctx.quick:
                steps.append(replace(s, preset="mixed", fast_bias_correction=False))
        if "BF16" in ctx.host.openvino_capabilities:
            steps.append(replace(steps[-1], float_ops="fp32"))
        return [OpenVINONNCFInt8(step) for step in steps]

    def unavailable(self, ctx: BuildContext) -> str | None:
        if "INT8" not in ctx.host.openvino_capabilities:
            return "OpenVINO's CPU plugin offers no INT8 here"
        if not self.quantizable_nodes(ctx):
            return "no Conv/MatMul/Gemm nodes to quantize"
        return None

    def quantized_nodes(self, ctx: BuildContext, variant: Variant) -> list[str]:
        # NNCF decides for itself what to quantize (embedding Gathers, Reshapes of
        # transformers, ...): rank every node of the user's graph that reads a DequantizeLinear.
        return dequantized_readers(variant.model_path, ctx.repaired)

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        import nncf

        s = self.settings
        nncf.set_log_level(logging.ERROR)
        out = self.variant_path(ctx, exclude)
        model_type = nncf.ModelType.TRANSFORMER if ctx.is_transformer else None
        if not out.exists():  # the float_ops alternative reuses its NNCF build
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
                    quantized = nncf.quantize(
                        ctx.repaired,
                        nncf.Dataset(ctx.calibration),
                        subset_size=len(ctx.calibration),
                        model_type=model_type,
                        preset=nncf.QuantizationPreset(s.preset) if s.preset else None,
                        fast_bias_correction=s.fast_bias_correction,
                        ignored_scope=(
                            nncf.IgnoredScope(names=list(exclude), validate=False)
                            if exclude
                            else None
                        ),
                        advanced_parameters=_advanced(s),
                    )
                onnx.save(quantized, str(out))
            except Exception as exc:  # NNCF's errors name its internals: say it in user terms
                raise build_failure(
                    self, "NNCF", exc, ctx.repaired, unknown_ops(ctx.repaired)
                ) from exc
        runtime_precision = s.float_ops if "BF16" in ctx.host.openvino_capabilities else "fp32"
        params = {
            "tool": "nncf.quantize",
            "model_type": "transformer" if model_type else "default",
            **{k: v for k, v in asdict(s).items() if k != "float_ops"},
            "subset_size": len(ctx.calibration),
            "float_ops_precision": runtime_precision,
        }
        return Variant(out, self.backend, runtime_precision, {}, params)


def _advanced(settings: NNCFSettings) -> object | None:
    if settings.smooth_quant_alpha is None:
        return None
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    alpha = settings.smooth_quant_alpha
    alphas = AdvancedSmoothQuantParameters(matmul=alpha, convolution=-1)
    return AdvancedQuantizationParameters(smooth_quant_alphas=alphas)

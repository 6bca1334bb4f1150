"""OpenVINO int8 via NNCF post-training quantization of the ONNX graph.

NNCF writes a QDQ ONNX model (so the artifact stays ONNX: `inspect` reads it, OpenVINO runs the
QDQ pairs as int8 kernels). Transformers get NNCF's transformer preset (SmoothQuant, mixed
symmetric/asymmetric). The ops NNCF leaves in float run at bf16 where the CPU has it. Recovery
keeps nodes in float through NNCF's ignored scope.

SmoothQuant migrates activation outliers into the weights using per-channel maxima from the
calibration set; with the few dozen samples an eval set spares those maxima are noisy, and on
MiniLM (12 calibration sentences) it cost 0.03 cosine where plain int8 lost 0.007. So when the
first build misses the budget, the same recipe without SmoothQuant is tried before recovery.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

import onnx

from edgeshift.optimize.recipes import BuildContext, Recipe, Variant, build_failure

# NNCF quantizes these on CPU; recovery ranks them.
_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def unknown_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of MODEL that NNCF's ONNX backend has no metatype for (it passes them through
    unquantized, and they are the first suspects when it fails)."""
    from nncf.common.graph.operator_metatypes import UnknownMetatype
    from nncf.onnx.graph.metatypes.onnx_metatypes import ONNX_OPERATION_METATYPES

    ops = sorted({n.op_type for n in model.graph.node})
    lookup = ONNX_OPERATION_METATYPES.get_operator_metatype_by_op_name
    return [op for op in ops if lookup(op) is UnknownMetatype]


class OpenVINONNCFInt8(Recipe):
    name = "openvino-int8"
    family = "openvino_nncf_int8"
    backend = "openvino"
    precision = "int8"
    quantized = True
    op_types = _QUANTIZED_OPS

    def __init__(self, smooth_quant: bool = True) -> None:
        self.smooth_quant = smooth_quant
        self.tag = "" if smooth_quant else "-nosq"

    def alternatives(self, ctx: BuildContext) -> list[Recipe]:
        # SmoothQuant is part of NNCF's transformer preset only.
        if self.smooth_quant and ctx.is_transformer:
            return [OpenVINONNCFInt8(smooth_quant=False)]
        return []

    def unavailable(self, ctx: BuildContext) -> str | None:
        if "INT8" not in ctx.host.openvino_capabilities:
            return "OpenVINO's CPU plugin offers no INT8 here"
        if not self.quantizable_nodes(ctx):
            return "no Conv/MatMul/Gemm nodes to quantize"
        return None

    def quantized_nodes(self, ctx: BuildContext, variant: Variant) -> list[str]:
        # NNCF decides for itself what to quantize (embedding Gathers, Reshapes of
        # transformers, ...): rank every node of the user's graph that reads a DequantizeLinear.
        model = onnx.load(str(variant.model_path), load_external_data=False)
        dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        readers = {
            n.name
            for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dequantized for i in n.input)
        }
        return [n.name for n in ctx.repaired.graph.node if n.name in readers]

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        import nncf

        nncf.set_log_level(logging.ERROR)
        out = self.variant_path(ctx, exclude)
        model_type = nncf.ModelType.TRANSFORMER if ctx.is_transformer else None
        ignored = nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None
        advanced = None
        if not self.smooth_quant:
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                AdvancedSmoothQuantParameters,
            )

            off = AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)
            advanced = AdvancedQuantizationParameters(smooth_quant_alphas=off)
        # NNCF draws rich progress bars on stdout; keep stdout clean for --json.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantized = nncf.quantize(
                    ctx.repaired,
                    nncf.Dataset(ctx.calibration),
                    subset_size=len(ctx.calibration),
                    model_type=model_type,
                    ignored_scope=ignored,
                    advanced_parameters=advanced,
                )
            onnx.save(quantized, str(out))
        except Exception as exc:  # NNCF's errors name its internals: say it in the user's terms
            raise build_failure(self, "NNCF", exc, ctx.repaired, unknown_ops(ctx.repaired)) from exc
        runtime_precision = "bf16" if "BF16" in ctx.host.openvino_capabilities else "fp32"
        params = {
            "tool": "nncf.quantize",
            "model_type": "transformer" if model_type else "default",
            "smooth_quant": self.smooth_quant and model_type is not None,
            "subset_size": len(ctx.calibration),
            "float_ops_precision": runtime_precision,
        }
        return Variant(out, self.backend, runtime_precision, {}, params)

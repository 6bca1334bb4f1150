"""ORT dynamic int8: weights quantized per channel offline, activations at run time.

MatMul/Gemm and LSTM by default: on MatMul-heavy models (transformers) it is a solid win;
LSTM becomes DynamicQuantizeLSTM (int8 weights, the only int8 LSTM ORT has: its static QDQ
quantizer leaves LSTM float), which on the text-line recognizer's BiLSTM took ~25% off the
LSTM's time. Conv becomes ConvInteger, which on x86 is many times slower than fp32 Conv and
quantizes each activation tensor with one runtime scale, so outliers wipe out the rest of
the tensor. ``ort-int8-dynamic-conv`` includes Conv for those who want to see that; it is not
in the default search.

Weights are per channel (per output column), and that is not searched: ORT's integer MatMul
kernels take a scale per column at no extra cost, and one scale per tensor is never the more
accurate. Recovery keeps single nodes in float where the budget is missed.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgeshift.optimize.recipes import (
    BuildContext,
    Recipe,
    Variant,
    build_failure,
    quiet_root_logger,
)


class OrtDynamicInt8(Recipe):
    family = "ort_dynamic_int8"
    backend = "onnxruntime"
    precision = "int8"
    quantized = True

    def __init__(self, with_conv: bool = False) -> None:
        self.name = "ort-int8-dynamic-conv" if with_conv else "ort-int8-dynamic"
        self.op_types = ("MatMul", "Gemm", "Conv") if with_conv else ("MatMul", "Gemm")
        self.default = not with_conv

    def model_op_types(self, ctx: BuildContext) -> tuple[str, ...]:
        """The op types quantized in this model: OP_TYPES, plus LSTM where it has one."""
        has_lstm = any(n.op_type == "LSTM" for n in ctx.repaired.graph.node)
        return (*self.op_types, "LSTM") if has_lstm else self.op_types

    def quantizable_nodes(self, ctx: BuildContext) -> list[str]:
        ops = self.model_op_types(ctx)
        return [n.name for n in ctx.repaired.graph.node if n.op_type in ops]

    def unavailable(self, ctx: BuildContext) -> str | None:
        if not self.quantizable_nodes(ctx):
            return f"no {'/'.join(self.op_types)}/LSTM nodes to quantize"
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        out = self.variant_path(ctx, exclude)
        op_types = self.model_op_types(ctx)
        try:
            with quiet_root_logger():
                quantize_dynamic(
                    ctx.repaired_path,
                    out,
                    op_types_to_quantize=list(op_types),
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude),
                    # Fused or custom-domain nodes defeat type inference; their outputs are float.
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        except Exception as exc:  # name the recipe, the node and the way out
            raise build_failure(self, "onnxruntime's quantize_dynamic", exc, ctx.repaired) from exc
        params = {"op_types": list(op_types), "per_channel": True, "weight_type": "int8"}
        return Variant(out, self.backend, "fp32", {"graph_optimization_level": "all"}, params)

"""ORT fp16: weights and activations in half precision, inputs and outputs kept fp32.

ORT's CPU provider computes most fp16 ops by converting to fp32 (or lacks kernels for them),
so without fp16 arithmetic in the CPU (AVX512-FP16, Arm FEAT_FP16) the variant is slower,
not faster: the recipe is skipped there, and tried (and measured) where the host has it.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from edgeshift.optimize.host import has_fp16_arithmetic
from edgeshift.optimize.recipes import BuildContext, Recipe, Variant


class OrtFp16(Recipe):
    name = "ort-fp16"
    family = "ort_fp16"
    backend = "onnxruntime"
    precision = "fp16"

    def unavailable(self, ctx: BuildContext) -> str | None:
        if not has_fp16_arithmetic(ctx.host):
            return (
                "the CPU has no fp16 arithmetic (avx512_fp16 / Arm fp16): ORT fp16 would run slower"
            )
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = self.variant_path(ctx, exclude)
        model = onnx.load(str(ctx.source_path))
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
        onnx.save(half, str(out))
        params = {"keep_io_types": True}
        return Variant(out, self.backend, "fp32", {"graph_optimization_level": "all"}, params)

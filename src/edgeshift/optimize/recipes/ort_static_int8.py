"""ORT static int8 in QDQ format: weights per channel (int8), activations per tensor (uint8)
with ranges calibrated on the calibration split.

Calibration is MinMax: with the few dozen samples a user's eval set spares, entropy and
percentile histograms are too sparse to trust, and MinMax never clips a value seen in
calibration. Clipping trouble is what accuracy recovery is for. The calibrated ranges are
cached, so each recovery step only re-writes the graph. Only Conv/MatMul/Gemm are quantized:
those are the ops ORT fuses into integer kernels; QDQ around element-wise ops costs time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgeshift.optimize.host import has_int8_dot
from edgeshift.optimize.recipes import BuildContext, Recipe, Variant, quiet_root_logger


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


class OrtStaticInt8(Recipe):
    name = "ort-int8-static"
    family = "ort_static_int8"
    backend = "onnxruntime"
    precision = "int8"
    quantized = True
    op_types = ("Conv", "MatMul", "Gemm")

    def unavailable(self, ctx: BuildContext) -> str | None:
        if not self.quantizable_nodes(ctx):
            return "no Conv/MatMul/Gemm nodes to quantize"
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        out = self.variant_path(ctx, exclude)
        cache = ctx.workdir / f"{self.name}-ranges.json"
        # Without VNNI, u8s8 products can saturate int16 accumulators: use 7-bit weights there.
        reduce_range = not has_int8_dot(ctx.host)
        with quiet_root_logger():
            quantize_static(
                ctx.repaired_path,
                out,
                _FeedReader(ctx.calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(self.op_types),
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                calibration_cache_path=cache,
            )
        params = {
            "format": "QDQ",
            "op_types": list(self.op_types),
            "per_channel": True,
            "reduce_range": reduce_range,
            "activation_type": "uint8",
            "weight_type": "int8",
            "calibration": "MinMax",
            "calibration_batches": len(ctx.calibration),
        }
        return Variant(out, self.backend, "fp32", {"graph_optimization_level": "all"}, params)

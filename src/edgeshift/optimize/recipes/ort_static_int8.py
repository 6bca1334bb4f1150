"""ORT static int8 in QDQ format: weights per channel (int8), activations per tensor (uint8)
with ranges calibrated on the calibration split.

Calibration is MinMax: with the few dozen samples a user's eval set spares, entropy and
percentile histograms are too sparse to trust, and MinMax never clips a value seen in
calibration. Clipping trouble is what accuracy recovery is for. The calibrated ranges are
cached, so each recovery step only re-writes the graph. Only Conv/MatMul/Gemm are quantized:
those are the ops ORT fuses into integer kernels; QDQ around element-wise ops costs time.

ORT's quantizer routes *every* consumer of a quantized activation through its
QuantizeLinear/DequantizeLinear pair, float consumers included: a residual Add beside a
quantized MatMul then adds a uint8-rounded copy of the residual stream, and a node kept in
float for accuracy still reads rounded inputs. After quantizing, float consumers are wired
back to the float tensor (:func:`float_consumers_read_float`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgeshift.optimize.host import has_int8_dot
from edgeshift.optimize.recipes import (
    BuildContext,
    Recipe,
    Variant,
    build_failure,
    quiet_root_logger,
)


class FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def float_consumers_read_float(
    model: onnx.ModelProto, quantized_nodes: set[str]
) -> tuple[onnx.ModelProto, int]:
    """Rewire nodes outside QUANTIZED_NODES that read an activation's DequantizeLinear output
    to the float tensor before its QuantizeLinear. Returns the model and how many inputs moved."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    q_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    float_of = {
        n.output[0]: q_input[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_input
    }
    graph_outputs = {o.name for o in graph.output}
    moved = 0
    for node in graph.node:
        if node.name in quantized_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of and name not in graph_outputs:
                node.input[i] = float_of[name]
                moved += 1
    return out, moved


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
        try:
            with quiet_root_logger():
                quantize_static(
                    ctx.repaired_path,
                    out,
                    FeedReader(ctx.calibration),
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
        except Exception as exc:  # name the recipe, the node and the way out
            raise build_failure(self, "onnxruntime's quantize_static", exc, ctx.repaired) from exc
        quantized = {n for n in self.quantizable_nodes(ctx) if n not in set(exclude)}
        rewired, moved = float_consumers_read_float(onnx.load(str(out)), quantized)
        if moved:
            onnx.save(rewired, str(out))
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

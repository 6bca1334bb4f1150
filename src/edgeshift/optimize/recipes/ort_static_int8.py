"""ORT static int8 in QDQ format: weights int8 (per channel by default), activations uint8
per tensor, with ranges calibrated on the calibration split.

Calibration method and per-channel weights are search dimensions. The default setting is the
cheapest: MinMax ranges (one pass, never clips a value seen in calibration) and per-channel
weights. When it misses the budget the search tries, before keeping any layer in float
(:meth:`OrtStaticInt8.alternatives`): Percentile ranges (99.999th: a few huge activation
outliers stop setting the whole tensor's step), Entropy ranges (KL-optimal clipping of heavy
tails, the slowest to calibrate), then MinMax with per-tensor weights. Ranges are computed once per method and memoized in
``ctx.cache`` (calibration is the expensive part: every recovery rebuild then only re-writes
the graph). Activations stay asymmetric uint8 (x86's u8s8 kernels; s8s8 is slower there) and
``reduce_range`` follows the CPU (7-bit weights without VNNI), so neither is searched.

Conv/MatMul/Gemm are quantized (recovery ranks and keeps in float only these); the
``ort-int8-static-cnn`` candidate also quantizes the ops between convolutions that ORT runs
on uint8 (:data:`CNN_CHAIN_OPS`), so a CNN stays int8 from conv to conv. Softmax,
LayerNorm, LSTM and the residual Adds of a transformer stay float: QDQ around them costs
time or accuracy (ORT quantizes LSTM weights only dynamically: ``ort-int8-dynamic``).

ORT's quantizer routes *every* consumer of a quantized activation through its
QuantizeLinear/DequantizeLinear pair, float consumers included: a residual Add beside a
quantized MatMul then adds a uint8-rounded copy of the residual stream, and a node kept in
float for accuracy still reads rounded inputs. After quantizing, float consumers are wired
back to the float tensor (:func:`float_consumers_read_float`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from edgeshift.model.repair import names_read
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
    model: onnx.ModelProto, quantized_nodes: set[str], original: onnx.ModelProto | None = None
) -> tuple[onnx.ModelProto, int]:
    """Rewire nodes outside QUANTIZED_NODES that read an activation's DequantizeLinear output
    to the float tensor before its QuantizeLinear. Returns the model and how many inputs moved.

    With ORIGINAL (the graph before quantizing), a tensor whose producer changed op type is
    left alone: the quantizer folded a Relu into the Q after a Conv and gave the Conv the
    Relu's output name, so that "float tensor" is the Conv's, without the Relu (seg-unet's
    ConvTransposes read it so and lost 14 points)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    q_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    if original is not None:
        was = {o: n.op_type for n in original.graph.node for o in n.output}
        now = {o: n.op_type for n in graph.node for o in n.output}
        q_input = {q: t for q, t in q_input.items() if was.get(t, now.get(t)) == now.get(t)}
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


# Calibration settings per method. Histogram methods are asymmetric like the uint8 activations
# they calibrate (ORT's Percentile default is symmetric, which wastes half the range after a
# Relu). Entropy's threshold search runs over num_bins/2 - num_quantized_bins/2 candidates:
# ORT's default (128 and 128) has exactly one, the full range, i.e. MinMax; 512 bins let it
# clip to a quarter of the largest value, at ~0.3 s of ORT's pure-Python search per tensor.
CALIBRATION_OPTIONS: dict[str, dict[str, object]] = {
    "MinMax": {},
    "Percentile": {"percentile": 99.999, "num_bins": 2048, "symmetric": False},
    "Entropy": {"num_bins": 512, "num_quantized_bins": 128, "symmetric": False},
}
# Feeds per collect_data call: histogram calibrators hold every intermediate tensor of the
# feeds they are given until they fold them into the histograms.
CALIBRATION_CHUNK = 8


def _compute_ranges(
    model_path: Path, op_types: Sequence[str], method: str, feeds: list[dict[str, np.ndarray]]
) -> Path:
    """Run METHOD's calibrator over FEEDS; the ranges go to a JSON file beside MODEL_PATH."""
    digest = hashlib.sha1(",".join(op_types).encode()).hexdigest()[:8]
    out = model_path.parent / f"ort-static-ranges-{method.lower()}-{digest}.json"
    with tempfile.TemporaryDirectory(prefix="edgeshift-calib-", dir=model_path.parent) as tmp:
        calibrator = create_calibrator(
            model_path,
            list(op_types),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod[method],
            extra_options=dict(CALIBRATION_OPTIONS[method]),
        )
        for start in range(0, len(feeds), CALIBRATION_CHUNK):
            calibrator.collect_data(FeedReader(feeds[start : start + CALIBRATION_CHUNK]))
        save_tensors_data(calibrator.compute_data(), out)
    return out


def ranges_key(op_types: Sequence[str], method: str) -> str:
    return f"ort-static-ranges:{method}:{','.join(op_types)}"


def calibration_ranges(ctx: BuildContext, op_types: Sequence[str], method: str) -> Path:
    """METHOD's calibration ranges for the repaired model: computed once per search."""
    key = ranges_key(op_types, method)
    if key not in ctx.cache:
        started = time.perf_counter()
        # ORT's histogram calibrators print their progress to stdout.
        with quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
            path = _compute_ranges(ctx.repaired_path, op_types, method, ctx.calibration)
        ctx.cache[key] = (path, time.perf_counter() - started)
    path, _ = ctx.cache[key]
    return Path(path)


def drop_dead_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Remove nodes none of whose outputs is read (the Q/DQ pairs rewiring left behind) and
    the initializers only they read. ORT keeps such nodes, and a MatMul whose output also
    feeds a dead QuantizeLinear has two consumers, which stops ORT fusing DQ→MatMul into
    MatMulIntegerToFloat: MiniLM's int8 graph then ran at 0.46x fp32 instead of ~2x."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    removed = 0
    while True:
        used = names_read(graph.node) | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    used = names_read(graph.node)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return model, removed


# Ops between the convolutions of a CNN that ORT runs on uint8 (QLinearAdd, QLinearConcat,
# NhwcMaxPool, QLinearGlobalAveragePool, ...; Relu/Clip fold into the conv before them).
# Quantizing them (ort-int8-static-cnn) keeps the chain int8 from conv to conv: without them
# each conv reads a float input it must quantize and writes a float output (or stays float:
# DQ→Conv→float has no integer kernel). Measured here, one noisy run each: kws-cnn 1.09x fp32
# → 3.1x, seg-unet 0.86x → 1.0x, textline-crnn 0.73x → 0.95x. A candidate of its own, not
# the default: folding Relu into the conv's range renames tensors and rounds every conv
# output, which moves the one-pass sensitivity ranking; selection keeps it only when faster.
CNN_CHAIN_OPS = (
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Add",
    "Concat",
    "Resize",
    "Flatten",
    "Reshape",
)  # not ConvTranspose: ORT's CPU has no integer kernel for it, so its Q/DQ is pure cost


class OrtStaticInt8(Recipe):
    name = "ort-int8-static"
    family = "ort_static_int8"
    backend = "onnxruntime"
    precision = "int8"
    quantized = True
    op_types = ("Conv", "MatMul", "Gemm")  # the compute ops recovery may keep in float

    def __init__(
        self, calibration: str = "MinMax", per_channel: bool = True, cnn_chain: bool = False
    ) -> None:
        if calibration not in CALIBRATION_OPTIONS:
            raise ValueError(f"unknown calibration {calibration!r}")
        self.calibration = calibration
        self.per_channel = per_channel
        self.cnn_chain = cnn_chain
        if cnn_chain:
            self.name = "ort-int8-static-cnn"
        default = calibration == "MinMax" and per_channel
        self.tag = "" if default else f"-{calibration.lower()}{'' if per_channel else '-pt'}"

    def quantized_op_types(self) -> tuple[str, ...]:
        """What this setting quantizes: the compute ops, plus the chain ops for -cnn."""
        return self.op_types + CNN_CHAIN_OPS if self.cnn_chain else self.op_types

    def unavailable(self, ctx: BuildContext) -> str | None:
        if not self.quantizable_nodes(ctx):
            return "no Conv/MatMul/Gemm nodes to quantize"
        if self.cnn_chain:
            if ctx.is_transformer:
                return "a transformer: quantized residual Adds would round the residual stream"
            if not any(n.op_type == "Conv" for n in ctx.repaired.graph.node):
                return "no Conv nodes: no conv-to-conv chain to keep in int8"
        return None

    def alternatives(self, ctx: BuildContext) -> list[Recipe]:
        """Cheapest first: each histogram method costs one calibration pass (memoized), the
        per-tensor setting none. --quick tries none (recovery alone)."""
        if self.tag or ctx.quick:
            return []
        chain = self.cnn_chain
        return [
            OrtStaticInt8("Percentile", cnn_chain=chain),
            OrtStaticInt8("Entropy", cnn_chain=chain),
            OrtStaticInt8("MinMax", per_channel=False, cnn_chain=chain),
        ]

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        out = self.variant_path(ctx, exclude)
        # Without VNNI, u8s8 products can saturate int16 accumulators: use 7-bit weights there.
        reduce_range = not has_int8_dot(ctx.host)
        try:
            op_types = self.quantized_op_types()
            ranges = calibration_ranges(ctx, op_types, self.calibration)
            with quiet_root_logger():
                quantize_static(
                    ctx.repaired_path,
                    out,
                    FeedReader(ctx.calibration),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types),
                    per_channel=self.per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude),
                    calibrate_method=CalibrationMethod[self.calibration],
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                    calibration_cache_path=ranges,
                )
        except Exception as exc:  # name the recipe, the node and the way out
            raise build_failure(self, "onnxruntime's quantize_static", exc, ctx.repaired) from exc
        quantized = {n.name for n in ctx.repaired.graph.node if n.op_type in op_types} - set(
            exclude
        )
        rewired, moved = float_consumers_read_float(onnx.load(str(out)), quantized, ctx.repaired)
        if moved:
            pruned, _ = drop_dead_nodes(rewired)
            onnx.save(pruned, str(out))
        params = {
            "format": "QDQ",
            "op_types": list(op_types),
            "per_channel": self.per_channel,
            "reduce_range": reduce_range,
            "activation_type": "uint8",
            "activation_symmetric": False,
            "weight_type": "int8",
            "calibration": self.calibration,
            "cnn_chain": self.cnn_chain,
            **(
                {"calibration_options": CALIBRATION_OPTIONS[self.calibration]}
                if CALIBRATION_OPTIONS[self.calibration]
                else {}
            ),
            "calibration_batches": len(ctx.calibration),
            "calibration_seconds": round(ctx.cache[ranges_key(op_types, self.calibration)][1], 3),
        }
        return Variant(out, self.backend, "fp32", {"graph_optimization_level": "all"}, params)

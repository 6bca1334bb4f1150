"""Which MAC ops of a QDQ model a runtime really runs in int8.

A QDQ model stores every quantized op as float: ``DequantizeLinear -> Conv -> QuantizeLinear``.
ONNX Runtime's CPU provider turns such a group into one ``QLinearConv`` only when the whole
pattern is there: the activation and the weight both come from a DequantizeLinear, and the
Conv's output goes to a QuantizeLinear and nowhere else (a Relu or Clip in between is
folded into the QuantizeLinear's range when the QuantizeLinear is its only consumer). A Conv
followed by ``Relu -> MaxPool -> QuantizeLinear`` (the quantizer puts no Q/DQ pair between
Relu and MaxPool) or feeding a float op stays a float Conv (``FusedConv`` in ORT's profiler)
on dequantized inputs: it runs at the float kernel's speed, not the int8 one's. Measured on
seg-unet's ``ort-int8-static`` artifact: 7 of its 18 convolutions ran as float
``FusedConv`` / ``ConvTranspose`` (ORT 1.32, ``SessionOptions.enable_profiling``).

The same measurement showed its three ConvTranspose layers, which the quantizer left float
(weights not through a DequantizeLinear), as float ``ConvTranspose``: an op the quantizer
left out is float on every runtime. OpenVINO's low-precision transformations carry int8
through MaxPool and other precision-preserving ops, so the Q-after rule is ONNX Runtime's.

Which fusions ONNX Runtime makes depends on more than the pattern (the tf2onnx exports of
MLPerf Tiny keep Conv -> Relu -> QuantizeLinear float, its ``ort-int8-static`` builds fuse
it), so the estimate asks ONNX Runtime itself (:func:`ort_float_nodes`: its optimized
graph, where an int8 weight still read by a DequantizeLinear marks a float op) and keeps
the pattern rule (:func:`qdq_float_nodes`, pure) for when it cannot.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from google.protobuf.message import DecodeError

_MAC_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_ORT_FUSED_ONLY_BEFORE_Q = {"Conv", "ConvTranspose"}
# Activations ORT folds into the QuantizeLinear that follows them (its range clips them).
_FOLDED_ACTIVATIONS = {"Relu", "Clip"}
RUNTIMES = ("onnxruntime", "openvino")
# The key of float_nodes_by_runtime's answer naming the int8 MatMuls ONNX Runtime runs with a
# float output (MatMulIntegerToFloat: a MatMul whose result goes to a float Add, as in a
# transformer's projections), which it runs slower than QLinearMatMul (calibrated apart).
FLOAT_OUT = "onnxruntime/float_out"
_ORT_FLOAT_OUT_OPS = {"MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def qdq_float_nodes(graph: onnx.GraphProto, runtime: str) -> frozenset[str]:
    """Names of the Conv / ConvTranspose / MatMul / Gemm nodes of the quantized (QDQ) GRAPH
    that RUNTIME runs in float: on every runtime those whose activation or weight does not
    come from a DequantizeLinear (ops the quantizer left out); on ONNX Runtime also the
    convolutions whose output does not go straight to a QuantizeLinear. Empty for a graph
    without QuantizeLinear."""
    nodes = list(graph.node)
    if not any(n.op_type == "QuantizeLinear" for n in nodes):
        return frozenset()
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in graph.output}

    def from_dq(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def only_to_q(name: str, depth: int = 0) -> bool:
        users = consumers.get(name, [])
        if name in graph_outputs or len(users) != 1:
            return False
        user = users[0]
        if user.op_type == "QuantizeLinear":
            return True
        return depth == 0 and user.op_type in _FOLDED_ACTIVATIONS and only_to_q(user.output[0], 1)

    out = set()
    for n in nodes:
        if n.op_type not in _MAC_OPS or not n.name:
            continue
        if not (len(n.input) >= 2 and from_dq(n.input[0]) and from_dq(n.input[1])):
            out.add(n.name)  # not quantized: float on every runtime
        elif (
            runtime == "onnxruntime"
            and n.op_type in _ORT_FUSED_ONLY_BEFORE_Q
            and not only_to_q(n.output[0])
        ):
            out.add(n.name)
    return frozenset(out)


def float_nodes_by_runtime(
    model_path: str | None, op_types: Iterable[str]
) -> dict[str, frozenset[str]]:
    """Per runtime, the MAC nodes of the QDQ model at MODEL_PATH it runs in float: on
    OpenVINO those the quantizer left out (:func:`qdq_float_nodes`); on ONNX Runtime also
    those its own optimizer left unfused (:func:`ort_float_nodes`), by the pattern rule when
    it cannot be asked. Empty when there is no file or OP_TYPES (the analysis' histogram)
    has no QuantizeLinear."""
    if not model_path or "QuantizeLinear" not in set(op_types):
        return {}
    try:
        graph = onnx.load(model_path, load_external_data=False).graph
    except (OSError, DecodeError):
        return {}
    out = {rt: qdq_float_nodes(graph, rt) for rt in RUNTIMES}
    asked = ort_execution(model_path)
    if asked is not None:
        out["onnxruntime"] = asked[0] | out["openvino"]
        out[FLOAT_OUT] = asked[1]
    return out


# ONNX Runtime ops that compute on int8/uint8 operands (what its QDQ fusions produce).
_ORT_INT8_OPS = {
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv",
}  # fmt: skip


def quantized_weights(graph: onnx.GraphProto) -> dict[str, str]:
    """MAC node name -> the name of its stored int8 weight (the initializer its
    DequantizeLinear reads), for the MAC nodes of GRAPH whose weight comes through one."""
    producer = {out: n for n in graph.node for out in n.output}
    out = {}
    for n in graph.node:
        if n.op_type not in _MAC_OPS or not n.name or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            out[n.name] = dq.input[0]
    return out


def float_after_optimization(weights: dict[str, str], optimized: onnx.GraphProto) -> frozenset[str]:
    """Of WEIGHTS (:func:`quantized_weights` of the graph given to ONNX Runtime), the MAC
    nodes that its OPTIMIZED graph runs in float: their int8 weight is read only by a
    DequantizeLinear there (a float Conv / Gemm / FusedConv on dequantized weights), or
    was folded away into a float constant. Read by the weight, not the node name: ORT
    renames what it fuses (MatMul + Add -> Gemm or QGemm)."""
    readers: dict[str, set[str]] = {}
    for n in optimized.node:
        for name in n.input:
            readers.setdefault(name, set()).add(n.op_type)
    out = set()
    for node, weight in weights.items():
        ops = readers.get(weight, set())
        if not ops & _ORT_INT8_OPS:
            out.add(node)
    return frozenset(out)


def float_out_after_optimization(
    weights: dict[str, str], optimized: onnx.GraphProto
) -> frozenset[str]:
    """Of WEIGHTS, the MAC nodes ONNX Runtime's OPTIMIZED graph runs as an int8 MatMul with
    a float output (their int8 weight read by MatMulIntegerToFloat)."""
    readers: dict[str, set[str]] = {}
    for n in optimized.node:
        for name in n.input:
            readers.setdefault(name, set()).add(n.op_type)
    return frozenset(
        node for node, weight in weights.items() if readers.get(weight, set()) & _ORT_FLOAT_OUT_OPS
    )


def ort_float_nodes(model_path: str) -> frozenset[str] | None:
    """The MAC nodes of the QDQ model at MODEL_PATH that ONNX Runtime runs in float (see
    :func:`ort_execution`); None when it cannot tell."""
    found = ort_execution(model_path)
    return None if found is None else found[0]


def ort_execution(model_path: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The edge: which MAC nodes of the QDQ model at MODEL_PATH ONNX Runtime runs in float,
    and which as int8 MatMuls with a float output, asked of ONNX Runtime itself (its graph
    after the extended optimizations, where the QDQ fusions happen). None when it cannot
    tell (the model does not open, or ONNX Runtime is missing): the caller falls back to
    the pattern rule."""
    import tempfile
    from pathlib import Path

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        weights = quantized_weights(onnx.load(model_path, load_external_data=False).graph)
    except (OSError, DecodeError):
        return None
    if not weights:
        return frozenset(), frozenset()
    with tempfile.TemporaryDirectory(prefix="edgeshift-ort-graph-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath, load_external_data=False)
        except Exception:  # any refusal of the runtime: the caller falls back to the rule
            return None
    return (
        float_after_optimization(weights, optimized.graph),
        float_out_after_optimization(weights, optimized.graph),
    )

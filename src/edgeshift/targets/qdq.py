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

Pure: a GraphProto in, node names out.
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
    """:func:`qdq_float_nodes` per runtime of the .onnx file at MODEL_PATH (its graph only,
    no weights); empty when there is no file or OP_TYPES (the analysis' histogram) has no
    QuantizeLinear."""
    if not model_path or "QuantizeLinear" not in set(op_types):
        return {}
    try:
        model = onnx.load(model_path, load_external_data=False)
    except (OSError, DecodeError):
        return {}
    return {rt: qdq_float_nodes(model.graph, rt) for rt in RUNTIMES}

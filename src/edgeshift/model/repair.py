"""Repair an ONNX graph so quantizers and runtimes accept it. Pure functions on ModelProto.

Each pass returns a new model and leaves its input untouched; :func:`repair_for_quantization`
runs them all and says what it changed:

- Constant nodes become initializers: paddle2onnx (and some tf2onnx graphs) keep weights in
  Constant nodes, and the quantizers only quantize weights that are initializers.
- A BatchNormalization right after a Conv is folded into the Conv's weights and bias:
  paddle2onnx leaves them apart, and quantizers then wrap the float BatchNormalization in
  DequantizeLinear/QuantizeLinear pairs that cost more than the int8 Conv saves (the zoo's
  quirk-paddle ran int8 4x slower than fp32). ONNX Runtime folds them in float; this does the
  same before quantizing.
- The default-domain opset is raised to >= 13: per-channel QuantizeLinear/DequantizeLinear
  (the ``axis`` attribute) exists from opset 13, and OpenVINO rejects per-channel QDQ at 12.
- Every node gets a unique name: float fallback excludes nodes by name.
- Shapes are inferred (onnx's inference, then ORT's symbolic inference, then none at all):
  quantizers need the element types of intermediate tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_QUANT_OPSET = 13

_SCALAR_ATTRS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


@dataclass
class RepairResult:
    """The repaired model and one line per change made (empty when nothing was needed)."""

    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node yields, or None for forms we leave alone (sparse, strings)."""
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            return tensor
        if attr.name in _SCALAR_ATTRS:
            value = helper.get_attribute_value(attr)
            array = np.asarray(value, dtype=_SCALAR_ATTRS[attr.name])
            return numpy_helper.from_array(array, node.output[0])
    return None


def constants_to_initializers(model: onnx.ModelProto) -> RepairResult:
    """Turn the main graph's Constant nodes into initializers of the same name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept: list[onnx.NodeProto] = []
    moved = 0
    for node in out.graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and not node.domain else None
        if tensor is None:
            kept.append(node)
            continue
        out.graph.initializer.append(tensor)
        moved += 1
    if not moved:
        return RepairResult(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return RepairResult(out, [f"moved {moved} Constant node(s) into initializers"])


def names_read(nodes: Sequence[onnx.NodeProto], subgraphs_only: bool = False) -> set[str]:
    """Every tensor name NODES read, the bodies of If/Loop/Scan included (they may read
    outer names); with SUBGRAPHS_ONLY, only the names those bodies read."""
    names: set[str] = set()
    for node in nodes:
        if not subgraphs_only:
            names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= names_read(sub.node)
    return names


def _foldable(
    bn: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    readers: dict[str, int],
    inits: dict[str, np.ndarray],
    kept: set[str],
) -> onnx.NodeProto | None:
    """The Conv BN can be folded into, or None: an inference-mode BatchNormalization whose
    parameters are float initializers, reading a float-weighted Conv's output that nothing
    else reads (no other node, graph output or subgraph body: KEPT)."""
    if bn.domain or len(bn.input) != 5 or any(o for o in bn.output[1:]):
        return None
    if any(a.name == "training_mode" and a.i for a in bn.attribute):
        return None
    if not all(name in inits and inits[name].dtype == np.float32 for name in bn.input[1:]):
        return None
    conv = producer.get(bn.input[0])
    if conv is None or conv.op_type != "Conv" or conv.domain:
        return None
    if readers.get(conv.output[0], 0) != 1 or conv.output[0] in kept:
        return None
    weight = inits.get(conv.input[1])
    if weight is None or weight.dtype != np.float32:
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return None
    return conv


def fold_batch_norms(model: onnx.ModelProto) -> RepairResult:
    """Fold every BatchNormalization that directly follows a Conv into that Conv (new weight
    and bias initializers, so weights shared with other nodes stay as they were)."""
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    # Names that must stay: graph outputs and what If/Loop/Scan bodies read.
    kept = {o.name for o in graph.output} | names_read(graph.node, subgraphs_only=True)
    folds = {}
    for bn in graph.node:
        if bn.op_type == "BatchNormalization":
            conv = _foldable(bn, producer, readers, inits, kept)
            if conv is not None:
                folds[conv.name or conv.output[0]] = (conv, bn)
    if not folds:
        return RepairResult(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dropped = {bn.output[0] for _, bn in folds.values()}
    replaced = {name for conv, bn in folds.values() for name in (*conv.input[1:], *bn.input[1:])}
    new_nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.op_type == "BatchNormalization" and node.output[0] in dropped:
            continue
        key = node.name or node.output[0]
        if node.op_type == "Conv" and key in folds:
            _, bn = folds[key]
            epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale, beta, mean, var = (inits[name] for name in bn.input[1:])
            factor = scale / np.sqrt(var + np.float32(epsilon))
            weight = inits[node.input[1]]
            bias = (
                inits[node.input[2]]
                if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[0], np.float32)
            )
            shape = (-1,) + (1,) * (weight.ndim - 1)
            folded_w = (weight * factor.reshape(shape)).astype(np.float32)
            folded_b = ((bias - mean) * factor + beta).astype(np.float32)
            w_name, b_name = f"{bn.output[0]}__folded_w", f"{bn.output[0]}__folded_b"
            out.graph.initializer.extend(
                [
                    numpy_helper.from_array(folded_w, w_name),
                    numpy_helper.from_array(folded_b, b_name),
                ]
            )
            del node.input[1:]
            node.input.extend([w_name, b_name])
            node.output[0] = bn.output[0]
        new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    # The replaced parameters go unless another node (or a subgraph body) still reads them.
    read = names_read(new_nodes)
    unused = [t for t in out.graph.initializer if t.name in replaced and t.name not in read]
    for tensor in unused:
        out.graph.initializer.remove(tensor)
    return RepairResult(
        out, [f"folded {len(folds)} BatchNormalization node(s) into the Conv before each"]
    )


def upgrade_opset(model: onnx.ModelProto, min_opset: int = MIN_QUANT_OPSET) -> RepairResult:
    """Convert the default domain to ``min_opset`` when it is older (needs per-channel QDQ)."""
    have = default_opset(model)
    if have >= min_opset:
        return RepairResult(model)
    try:
        converted = onnx.version_converter.convert_version(model, min_opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RepairResult(model, [f"opset {have} kept: upgrade to {min_opset} failed ({first})"])
    return RepairResult(converted, [f"upgraded opset {have} -> {min_opset}"])


def name_nodes(model: onnx.ModelProto) -> RepairResult:
    """Give every main-graph node a unique, non-empty name (existing unique names are kept)."""
    seen: set[str] = set()
    needs = False
    for node in model.graph.node:
        if not node.name or node.name in seen:
            needs = True
            break
        seen.add(node.name)
    if not needs:
        return RepairResult(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node if n.name}
    seen = set()
    renamed = 0
    for index, node in enumerate(out.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in taken or candidate in seen:
            candidate += "_"
        node.name = candidate
        seen.add(candidate)
        renamed += 1
    return RepairResult(out, [f"named {renamed} unnamed or duplicate node(s)"])


def infer_shapes(model: onnx.ModelProto) -> RepairResult:
    """Shape-infer with onnx, falling back to ORT's symbolic inference, then to no change."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        return RepairResult(inferred)
    except Exception as onnx_exc:  # strict mode raises InferenceError; >2 GB raises ValueError
        first = str(onnx_exc).strip().splitlines()[0][:200] if str(onnx_exc).strip() else "?"
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if symbolic is not None:
            return RepairResult(symbolic, [f"onnx shape inference failed ({first}); used ORT's"])
    except Exception:  # symbolic inference fails on unknown custom ops: fall through
        pass
    return RepairResult(model, [f"shape inference failed ({first}); shapes left as they were"])


def repair_for_quantization(model: onnx.ModelProto) -> RepairResult:
    """All passes, in the order each needs the last: constants, batch norms, opset, names,
    shapes."""
    notes: list[str] = []
    current = model
    steps = (constants_to_initializers, fold_batch_norms, upgrade_opset, name_nodes, infer_shapes)
    for step in steps:
        result = step(current)
        current = result.model
        notes.extend(result.notes)
    return RepairResult(current, notes)

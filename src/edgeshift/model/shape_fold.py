"""Values of the small tensors that compute shapes, folded at concrete input shapes.

Exporters compute shapes in the graph (``Shape → Gather → Concat → Where → Expand``, the
pattern torch writes for ``x.expand(-1, n, -1)``). Once the input shapes are fixed those
values are constants, but ONNX shape inference propagates them through a few ops only. Here
every node whose inputs are known small values (or a ``Shape``/``Size`` of a tensor whose
shape is known) is evaluated with the ONNX reference implementation, so the next round of
shape inference sees the result as an initializer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeshift.model.op_costs import TensorInfo

# Values up to this many elements are folded; shape tensors are far smaller.
SMALL_VALUE_ELEMENTS = 1024
_NOT_FOLDED = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout", "If", "Loop", "Scan"}
)  # fmt: skip


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    if math.prod(t.dims) > SMALL_VALUE_ELEMENTS:
        return None
    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception:  # external data not loaded, exotic dtype: not needed for shapes
        return None


def small_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small initializers and Constant-node values of GRAPH, by tensor name."""
    values: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        value = _array(init)
        if value is not None:
            values[init.name] = value
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        for a in node.attribute:
            value = None
            if a.name == "value":
                value = _array(a.t)
            elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                raw = helper.get_attribute_value(a)
                value = np.asarray(raw, np.int64 if "int" in a.name else np.float32)
            if value is not None:
                values[node.output[0]] = value
    return values


def _evaluate(
    node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: Mapping[str, int]
) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator  # ~0.2 s import, only when needed

    names = [n for n in node.input if n]
    outputs = [n for n in node.output if n]
    graph = helper.make_graph(
        [node],
        "fold",
        [helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names)],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow in a shape computation is not ours
            results = ReferenceEvaluator(graph, opsets=dict(opsets)).run(None, feeds)
    except Exception:  # an op the reference lacks, or inputs it rejects: leave it unknown
        return None
    return [np.asarray(r) for r in results]


def _output_elements(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray]) -> int | None:
    """Elements the ops that make tensors out of values would allocate, or None for others.

    Checked before evaluating: ``Range(0, seq)`` at seq = 2**40 must not be materialised.
    """
    try:
        args = [feeds.get(n) for n in node.input]
        if node.op_type == "Range" and all(a is not None for a in args[:3]):
            start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in args[:3])
            return max(0, math.ceil((limit - start) / delta)) if delta else None
        if node.op_type == "ConstantOfShape" and args and args[0] is not None:
            return math.prod(int(d) for d in np.asarray(args[0]).reshape(-1))
        if node.op_type in ("Expand", "Tile") and len(args) > 1 and args[0] is not None:
            shape, other = args[0].shape, [int(d) for d in np.asarray(args[1]).reshape(-1)]
            if node.op_type == "Tile":
                return math.prod(s * r for s, r in zip(shape, other, strict=False))
            rank = max(len(shape), len(other))
            padded = [1] * (rank - len(shape)) + list(shape)
            target = [1] * (rank - len(other)) + other
            return math.prod(max(a, b) for a, b in zip(padded, target, strict=True))
        if node.op_type == "OneHot" and len(args) > 1 and args[0] is not None:
            return args[0].size * int(np.asarray(args[1]).reshape(-1)[0])
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return SMALL_VALUE_ELEMENTS + 1  # values it cannot size are not worth the risk
    return None


def fold_values(
    nodes: Sequence[onnx.NodeProto],
    order: Sequence[int],
    values: Mapping[str, np.ndarray],
    infos: Mapping[str, TensorInfo],
    opsets: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """New values of node outputs that VALUES and the known shapes in INFOS determine."""
    new: dict[str, np.ndarray] = {}

    def known(name: str) -> np.ndarray | None:
        return new.get(name, values.get(name))

    for i in order:
        node = nodes[i]
        outputs = [o for o in node.output if o]
        if (
            not outputs
            or all(known(o) is not None for o in outputs)
            or node.domain not in ("", "ai.onnx")
            or node.op_type in _NOT_FOLDED
        ):
            continue
        if node.op_type in ("Shape", "Size"):
            info = infos.get(node.input[0])
            if info is None or info.shape is None:
                continue
            if node.op_type == "Size":
                new[outputs[0]] = np.asarray(math.prod(info.shape), np.int64)
                continue
            attrs = {a.name: a.i for a in node.attribute}
            # Shape-15 start/end slice the dims, negative values counting from the end.
            dims = info.shape[slice(attrs.get("start", 0), attrs.get("end"))]
            new[outputs[0]] = np.asarray(dims, np.int64)
            continue
        names = [n for n in node.input if n]
        feeds = {n: known(n) for n in names}
        if not names or any(v is None for v in feeds.values()):
            continue
        if sum(v.size for v in feeds.values() if v is not None) > 4 * SMALL_VALUE_ELEMENTS:
            continue
        planned = _output_elements(node, {n: v for n, v in feeds.items() if v is not None})
        if planned is not None and planned > SMALL_VALUE_ELEMENTS:
            continue
        out_info = infos.get(outputs[0])
        if out_info is not None and (out_info.numel or 0) > SMALL_VALUE_ELEMENTS:
            continue
        results = _evaluate(node, {n: v for n, v in feeds.items() if v is not None}, opsets)
        if results is None:
            continue
        for name, value in zip(outputs, results, strict=False):
            if value.size <= SMALL_VALUE_ELEMENTS:
                new[name] = value
    return new

"""Concrete type and shape of every tensor of a graph's top level, at given input shapes.

ONNX shape inference runs on a *skeleton* of the model: the real inputs fixed to concrete
shapes, large weights turned into typed graph inputs (inference needs their shapes, not their
bytes — so a multi-GB model costs no copy), small constants kept because data propagation
reads them (Reshape targets, Slice bounds). What onnx leaves unknown is retried with ORT's
symbolic shape inference, then with the model's own value_info where its symbolic dims are
known; what stays unknown is reported by the caller.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeshift.model.op_costs import Shape, TensorInfo
from edgeshift.model.shape_fold import fold_values, small_constants

# Constants up to this many elements stay in the skeleton for data propagation.
SMALL_TENSOR_ELEMENTS = 1024
_MAX_ROUNDS = 8  # of inference + folding; shape chains settle in 2-3


def _vi_info(vi: onnx.ValueInfoProto) -> TensorInfo | None:
    if not vi.type.HasField("tensor_type"):
        return None  # sequences, maps, optionals: no tensor shape
    t = vi.type.tensor_type
    shape: Shape | None = None
    if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
        shape = tuple(int(d.dim_value) for d in t.shape.dim)
    return TensorInfo(t.elem_type, shape)


def _substituted(vi: onnx.ValueInfoProto, symbols: Mapping[str, int]) -> TensorInfo | None:
    # The exporter's value_info, with symbolic dims the inputs resolved filled in.
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims: list[int] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.dim_param in symbols:
            dims.append(symbols[d.dim_param])
        else:
            return None
    return TensorInfo(vi.type.tensor_type.elem_type, tuple(dims))


def _typed_input(name: str, info: TensorInfo) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, info.elem_type, info.shape)


def _skeleton(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Shape],
    input_types: Mapping[str, int],
    weights: Mapping[str, TensorInfo],
    order: Sequence[int],
    folded: Mapping[str, np.ndarray],
) -> onnx.ModelProto:
    graph = proto.graph
    skel = onnx.ModelProto()
    skel.ir_version = proto.ir_version
    skel.opset_import.extend(proto.opset_import)
    skel.functions.extend(proto.functions)
    g = skel.graph
    g.name = graph.name
    g.input.extend(
        _typed_input(name, TensorInfo(input_types[name], shape))
        for name, shape in input_shapes.items()
    )
    for init in graph.initializer:
        info = weights.get(init.name)
        if info is not None and (info.numel or 0) > SMALL_TENSOR_ELEMENTS:
            g.input.append(_typed_input(init.name, info))
        else:
            g.initializer.append(init)
            if proto.ir_version < 4:  # before IR 4 every initializer had to be an input too
                g.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    g.sparse_initializer.extend(graph.sparse_initializer)
    for i in order:  # onnx infers in stored order; a misordered graph would lose shapes
        node = graph.node[i]
        outputs = [o for o in node.output if o]
        if outputs and all(o in folded for o in outputs):
            g.initializer.extend(numpy_helper.from_array(folded[o], o) for o in outputs)
            continue
        out = node.output[0] if node.op_type == "Constant" and node.output else None
        info = weights.get(out) if out is not None else None
        if out is not None and info is not None and (info.numel or 0) > SMALL_TENSOR_ELEMENTS:
            g.input.append(_typed_input(out, info))
        else:
            g.node.append(node)
    # Outputs keep only their type: a stale fixed dim declared by the exporter would clash
    # with the shapes inferred at the requested input shapes.
    for out_vi in graph.output:
        vi = g.output.add()
        vi.name = out_vi.name
        if out_vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = out_vi.type.tensor_type.elem_type
        else:
            vi.type.CopyFrom(out_vi.type)
    return skel


def _collect(model: onnx.ModelProto, infos: dict[str, TensorInfo]) -> None:
    g = model.graph
    for vi in (*g.input, *g.value_info, *g.output):
        info = _vi_info(vi)
        known = infos.get(vi.name)
        if info is not None and (known is None or known.shape is None):
            infos[vi.name] = info


_ORT_SYMBOLIC = "onnxruntime.tools.symbolic_shape_infer"


@lru_cache(maxsize=1)
def _symbolic_engine() -> Any:
    """ORT's SymbolicShapeInference class, or None when onnxruntime/sympy are missing."""
    if _ORT_SYMBOLIC in sys.modules:
        return sys.modules[_ORT_SYMBOLIC].SymbolicShapeInference
    # Importing the onnxruntime.tools package imports torch when it is installed (~3 s); the
    # module itself needs only onnx, numpy and sympy, so it is loaded from its file.
    try:
        ort_spec = importlib.util.find_spec("onnxruntime")
        origin = ort_spec.origin if ort_spec else None
        if origin is None:
            return None
        path = Path(origin).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location(_ORT_SYMBOLIC, path)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SymbolicShapeInference
    except Exception:  # a missing sympy, a moved file: go without this fallback
        return None


def _ort_symbolic(skel: onnx.ModelProto) -> onnx.ModelProto | None:
    engine_class = _symbolic_engine()
    if engine_class is None:
        return None
    opsets = [o.version for o in skel.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets or opsets[0] < 7:  # its own lower bound
        return None
    # SymbolicShapeInference.infer_shapes() saves a file into the working directory when
    # some shape stays unknown; its steps are run here instead, keeping partial results.
    logger = logging.getLogger(_ORT_SYMBOLIC)
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it warns once per op it cannot handle
    try:
        engine = engine_class(2**31 - 1, True, False, 0)
        engine._preprocess(skel)  # works on its own copy
        while engine.run_:
            engine._infer_impl()
        engine._update_output_from_vi()
        result = engine.out_mp_
    except Exception:  # its failures are assertion/KeyError soup; the onnx result stands
        return None
    finally:
        logger.setLevel(level)
    return result if isinstance(result, onnx.ModelProto) else None


def infer_tensor_infos(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Shape],
    input_types: Mapping[str, int],
    weights: Mapping[str, TensorInfo],
    symbols: Mapping[str, int],
    order: Sequence[int],
) -> tuple[dict[str, TensorInfo], list[str]]:
    """Infos of the inputs, weights and node outputs of PROTO's top graph, and notes.

    ORDER is a topological order of the graph's nodes (indices into ``graph.node``).
    """
    infos, notes, _ = infer_with_values(proto, input_shapes, input_types, weights, symbols, order)
    return infos, notes


def infer_with_values(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Shape],
    input_types: Mapping[str, int],
    weights: Mapping[str, TensorInfo],
    symbols: Mapping[str, int],
    order: Sequence[int],
) -> tuple[dict[str, TensorInfo], list[str], dict[str, np.ndarray]]:
    """As :func:`infer_tensor_infos`, plus the small values known at these shapes (constants
    and folded shape computations), by tensor name."""
    notes: list[str] = []
    infos: dict[str, TensorInfo] = dict(weights)
    for name, shape in input_shapes.items():
        infos[name] = TensorInfo(input_types[name], shape)
    opsets = {o.domain: int(o.version) for o in proto.opset_import}
    values = small_constants(proto.graph)
    folded: dict[str, np.ndarray] = {}
    # Alternate inference and folding: each round's new shapes let more Shape nodes fold,
    # and each round's folded values let inference see further (Reshape/Expand targets).
    for _ in range(_MAX_ROUNDS):
        new = fold_values(proto.graph.node, order, {**values, **folded}, infos, opsets)
        for name, value in new.items():
            infos[name] = TensorInfo(helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        folded.update(new)
        skel = _skeleton(proto, input_shapes, input_types, weights, order, folded)
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skel, check_type=False, strict_mode=False, data_prop=True
            )
        except Exception as exc:  # InferenceError, or a C++ error on a malformed node
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"onnx shape inference failed ({first[:200]})")
            break
        before = sum(1 for info in infos.values() if info.shape is not None)
        _collect(inferred, infos)
        if not new and sum(1 for info in infos.values() if info.shape is not None) == before:
            break

    def missing() -> bool:
        return any(
            out and (infos.get(out) is None or infos[out].shape is None)
            for node in proto.graph.node
            for out in node.output
        )

    if missing():
        symbolic = _ort_symbolic(skel)
        if symbolic is not None:
            _collect(symbolic, infos)
    if missing():
        for vi in (*proto.graph.value_info, *proto.graph.output):
            known = infos.get(vi.name)
            if known is None or known.shape is None:
                info = _substituted(vi, symbols)
                if info is not None:
                    infos[vi.name] = info
    return infos, notes, {**values, **folded}


_BROADCASTING = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Where", "Equal", "Less", "LessOrEqual",
     "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "PRelu"}
)  # fmt: skip


@dataclass(frozen=True)
class ShapeConflict:
    """A node the model cannot run at the analysed shapes: extent ``got`` meets ``limit``.

    For a Gather, ``got`` is the largest index + 1 and ``limit`` the rows of its table; for a
    Reshape, the element counts; otherwise the two extents of one axis.
    """

    node: str
    op_type: str
    got: int
    limit: int
    detail: str  # what the node does with which shapes, for the message
    source_dims: tuple[int, ...] = ()  # a Reshape's input shape and target, as analysed
    target_dims: tuple[int, ...] = ()


def _broadcast_conflict(shapes: list[Shape]) -> tuple[int, int] | None:
    rank = max(len(s) for s in shapes)
    for axis in range(1, rank + 1):
        extents = {s[-axis] for s in shapes if len(s) >= axis and s[-axis] != 1}
        if len(extents) > 1:
            a, b = sorted(extents, reverse=True)[:2]
            return a, b
    return None


def _reshape_target(shape: Shape, target: np.ndarray, allowzero: bool) -> tuple[int, bool]:
    """The element count the target fixes (its -1 left out), and whether it has a -1."""
    fixed, open_axis = 1, False
    for axis, d in enumerate(int(v) for v in target.reshape(-1)):
        if d == -1:
            open_axis = True
        elif d == 0 and not allowzero:
            fixed *= shape[axis] if axis < len(shape) else 1
        else:
            fixed *= d
    return fixed, open_axis


def shape_conflicts(
    nodes: Sequence[onnx.NodeProto],
    order: Sequence[int],
    infos: Mapping[str, TensorInfo],
    values: Mapping[str, np.ndarray],
    weights: Mapping[str, TensorInfo],
) -> list[ShapeConflict]:
    """Nodes whose known input shapes or values cannot go together (pure; nothing runs).

    Broadcasts with two different extents on an axis (a position table of 512 rows added to
    1000 tokens), a MatMul whose inner dims differ, a Reshape to a fixed element count that
    the input does not have, a Gather reading past the rows of a weight table.
    """

    def shape(name: str) -> Shape | None:
        info = infos.get(name) if name else None
        return None if info is None else info.shape

    found: list[ShapeConflict] = []
    for i in order:
        node = nodes[i]
        if node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{i}"
        ins = [shape(n) for n in node.input]
        if node.op_type in _BROADCASTING and ins and all(s is not None for s in ins):
            known = [s for s in ins if s is not None]
            clash = _broadcast_conflict(known)
            if clash is not None:
                text = " with ".join(str(list(s)) for s in known)
                found.append(ShapeConflict(name, node.op_type, *clash, f"combines {text}"))
        elif node.op_type == "MatMul" and len(ins) == 2:
            a, b = ins
            if a is not None and b is not None and len(a) >= 1 and len(b) >= 2 and a[-1] != b[-2]:
                text = f"multiplies {list(a)} by {list(b)}"
                found.append(ShapeConflict(name, "MatMul", a[-1], b[-2], text))
        elif node.op_type == "Reshape" and len(node.input) > 1 and ins[0] is not None:
            target = values.get(node.input[1])
            src = ins[0]
            if target is None or src is None:
                continue
            allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
            fixed, open_axis = _reshape_target(src, np.asarray(target), allowzero)
            numel = math.prod(src)
            bad = (
                (numel % fixed != 0)
                if (open_axis and fixed)
                else (not open_axis and numel != fixed)
            )
            if bad:
                found.append(
                    ShapeConflict(
                        name,
                        "Reshape",
                        numel,
                        fixed,
                        f"reshapes {list(src)} ({numel} elements) to "
                        f"{[int(v) for v in np.asarray(target).reshape(-1)]}",
                        tuple(int(v) for v in src),
                        tuple(int(v) for v in np.asarray(target).reshape(-1)),
                    )
                )
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in weights:
            table = weights[node.input[0]].shape
            indices = values.get(node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if table is None or indices is None or not indices.size or not table:
                continue
            rows = table[axis]
            top = int(np.max(indices))
            if top >= rows or int(np.min(indices)) < -rows:
                found.append(
                    ShapeConflict(
                        name, "Gather", top + 1, rows, f"reads row {top} of a {rows}-row table"
                    )
                )
    return found

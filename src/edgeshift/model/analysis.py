"""Static analysis of an ONNX model: parameters, MACs/FLOPs per node, activation memory.

Pure apart from reading the file when given a path. The numbers are at one concrete input
shape: dynamic dims come from the overrides, else batch 1 and ``DEFAULT_DYNAMIC_DIM`` (each
guess listed in ``assumed``). Everything that could not be counted is listed in
``uncounted``, so a figure is never silently low.

What counts as a *parameter*: a constant tensor (initializer, sparse initializer or Constant
node output, in the main graph or any subgraph) with more than one element whose type is not
int64, uint64, bool or string — those hold shapes, axes and indices. Every constant's bytes
count in ``weight_bytes`` whatever its type or size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx.inliner
import psutil

from edgeshift.errors import ShapeError
from edgeshift.model.liveness import activation_memory, node_reads, topological_order
from edgeshift.model.load import LoadedModel, load_model
from edgeshift.model.op_costs import Cost, TensorInfo, node_cost, tensor_bytes
from edgeshift.model.shape_infer import ShapeConflict, infer_with_values, shape_conflicts
from edgeshift.model.shapes import (
    DynamicDim,
    TensorSpec,
    check_fits_memory,
    dynamic_dims,
    graph_io,
    input_bytes,
    resolve_input_shapes,
)

_T = onnx.TensorProto
_NOT_PARAMETER_TYPES = frozenset({_T.INT64, _T.UINT64, _T.BOOL, _T.STRING})
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


@dataclass(frozen=True)
class NodeCost:
    """Cost of one top-level node at the analysed input shapes.

    ``ModelAnalysis.nodes`` lists them in the topological order the analysis used.
    """

    name: str
    op_type: str
    macs: int  # multiply-accumulates (0 for non-MAC ops)
    flops: int  # 2*macs for MAC ops, ~1 per output element for element-wise
    input_bytes: int  # activation bytes read (inputs that are not weights)
    output_bytes: int  # activation bytes written
    weight_bytes: int  # bytes of constant weights this node reads
    counted: bool  # False when the cost could not be computed (unknown shape, unsupported op)
    domain: str = ""  # "" for the default ONNX domain
    reason: str | None = None  # why it was not counted
    folded: bool = False  # computed from constants only: folded at load time, costs 0


@dataclass
class ModelAnalysis:
    """What ``edgeshift inspect`` reports about a model (see docs/inspect.md)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    ir_version: int
    producer: str
    input_shapes: dict[str, tuple[int, ...]]
    assumed: list[str]
    params: int
    weight_bytes: int
    macs: int
    flops: int
    macs_by_op: dict[str, int]
    flops_by_op: dict[str, int]
    nodes: list[NodeCost]
    peak_activation_bytes: int
    naive_activation_bytes: int
    op_histogram: dict[str, int]
    uncounted: list[str]
    opsets: dict[str, int] = field(default_factory=dict)  # every imported domain's version
    constant_node_weight_bytes: int = 0  # the part of weight_bytes held in Constant nodes
    subgraph_nodes: int = 0  # nodes inside If/Loop/Scan bodies (in the histogram only)
    output_shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    # The .onnx file analysed, when it came from one: what measured figures are keyed by.
    source_path: str | None = None


@dataclass(frozen=True)
class _Weight:
    info: TensorInfo
    nbytes: int
    params: int
    in_constant_node: bool


def _tensor_weight(t: onnx.TensorProto, in_constant_node: bool) -> _Weight:
    numel = math.prod(t.dims)
    if t.data_type == _T.STRING and t.string_data:
        nbytes = sum(len(s) for s in t.string_data)
    else:
        nbytes = tensor_bytes(t.data_type, numel)
    params = numel if numel > 1 and t.data_type not in _NOT_PARAMETER_TYPES else 0
    return _Weight(
        TensorInfo(t.data_type, tuple(int(d) for d in t.dims)), nbytes, params, in_constant_node
    )


def _sparse_weight(s: onnx.SparseTensorProto, in_constant_node: bool) -> _Weight:
    # Stored as values + indices; the parameters are the stored values.
    values = _tensor_weight(s.values, in_constant_node)
    indices = _tensor_weight(s.indices, in_constant_node)
    dense = TensorInfo(s.values.data_type, tuple(int(d) for d in s.dims))
    return _Weight(dense, values.nbytes + indices.nbytes, values.params, in_constant_node)


def _constant_weight(node: onnx.NodeProto) -> _Weight | None:
    for a in node.attribute:
        if a.name == "value":
            return _tensor_weight(a.t, True)
        if a.name == "sparse_value":
            return _sparse_weight(a.sparse_tensor, True)
        # Scalar and list attributes: value_float(s), value_int(s), value_string(s).
        elem, count, scalar = {
            "value_float": (_T.FLOAT, 1, True),
            "value_floats": (_T.FLOAT, len(a.floats), False),
            "value_int": (_T.INT64, 1, True),
            "value_ints": (_T.INT64, len(a.ints), False),
            "value_string": (_T.STRING, 1, True),
            "value_strings": (_T.STRING, len(a.strings), False),
        }.get(a.name, (0, 0, False))
        if elem:
            shape: tuple[int, ...] = () if scalar else (count,)
            params = count if count > 1 and elem not in _NOT_PARAMETER_TYPES else 0
            return _Weight(TensorInfo(elem, shape), tensor_bytes(elem, count), params, True)
    return None


def _graph_weights(graph: onnx.GraphProto) -> dict[str, _Weight]:
    weights = {t.name: _tensor_weight(t, False) for t in graph.initializer}
    weights.update({s.values.name: _sparse_weight(s, False) for s in graph.sparse_initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            w = _constant_weight(node)
            if w is not None:
                weights[node.output[0]] = w
    return weights


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _nested_nodes(node: onnx.NodeProto) -> int:
    return sum(len(g.node) + sum(_nested_nodes(n) for n in g.node) for g in _subgraphs(node))


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip


def _foldable(node: onnx.NodeProto, constants: Mapping[str, int | None]) -> bool:
    # What ORT and OpenVINO fold at load time: a standard, deterministic op whose inputs
    # are all constants (e.g. DequantizeLinear of int8 weights, Transpose of a weight).
    inputs = [n for n in node.input if n]
    return (
        bool(inputs)
        and node.op_type != "Constant"
        and node.domain in ("", "ai.onnx")
        and node.op_type not in _NONDETERMINISTIC
        and all(n in constants for n in inputs)
        and not any(a.type in _GRAPH_ATTRS for a in node.attribute)
    )


def _node_costs(
    nodes: list[onnx.NodeProto],
    order: list[int],
    infos: Mapping[str, TensorInfo],
    weights: Mapping[str, _Weight],
) -> tuple[list[NodeCost], dict[tuple[str, str], list[str]], dict[str, int | None]]:
    """Per-node costs in ORDER, the uncounted nodes by (op, reason), and every constant
    tensor (weights and folded outputs) with its size."""

    def nbytes(name: str) -> int | None:
        info = infos.get(name)
        return None if info is None else info.nbytes

    constants: dict[str, int | None] = {name: w.nbytes for name, w in weights.items()}
    costs: list[NodeCost] = []
    not_counted: dict[tuple[str, str], list[str]] = {}
    for i in order:
        node = nodes[i]
        folded = _foldable(node, constants)
        if folded:
            cost = Cost()
        else:
            ins = [infos.get(n) if n else None for n in node.input]
            outs = [infos.get(n) if n else None for n in node.output]
            cost = node_cost(node, ins, outs)
        writes_constant = folded or (node.op_type == "Constant" and node.output[0] in weights)
        name = node.name or f"{node.op_type}_{i}"
        costs.append(
            NodeCost(
                name=name,
                op_type=node.op_type,
                macs=cost.macs,
                flops=cost.flops,
                input_bytes=sum(nbytes(n) or 0 for n in node.input if n and n not in constants),
                output_bytes=0
                if writes_constant
                else sum(nbytes(n) or 0 for n in node.output if n),
                weight_bytes=sum(constants[n] or 0 for n in node.input if n in constants),
                counted=cost.counted,
                domain=node.domain,
                reason=cost.reason,
                folded=folded,
            )
        )
        if folded:
            constants.update({n: nbytes(n) for n in node.output if n})
        if not cost.counted:
            not_counted.setdefault((_op_key(node), cost.reason or ""), []).append(name)
    return costs, not_counted, constants


@dataclass
class _Inventory:
    params: int = 0
    weight_bytes: int = 0
    constant_node_bytes: int = 0
    histogram: Counter[str] = field(default_factory=Counter)
    subgraph_nodes: int = 0


def _inventory(graph: onnx.GraphProto, top_weights: Mapping[str, _Weight]) -> _Inventory:
    """Parameters, weight bytes and op histogram over the graph and all its subgraphs."""
    inv = _Inventory(histogram=Counter(_op_key(n) for n in graph.node))
    pending: list[Mapping[str, _Weight]] = [top_weights]
    stack = [g for n in graph.node for g in _subgraphs(n)]
    while stack:
        sub = stack.pop()
        pending.append(_graph_weights(sub))
        for n in sub.node:
            inv.histogram[_op_key(n)] += 1
            inv.subgraph_nodes += 1
            stack.extend(_subgraphs(n))
    for weights in pending:
        inv.params += sum(w.params for w in weights.values())
        inv.weight_bytes += sum(w.nbytes for w in weights.values())
        inv.constant_node_bytes += sum(w.nbytes for w in weights.values() if w.in_constant_node)
    return inv


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def _cost_notes(
    nodes: list[onnx.NodeProto],
    order: list[int],
    costs: list[NodeCost],
    not_counted: Mapping[tuple[str, str], list[str]],
) -> list[str]:
    """One line per group of nodes whose FLOPs are left out, and why."""
    notes: list[str] = []
    folded = Counter(_op_key(nodes[i]) for c, i in zip(costs, order, strict=True) if c.folded)
    if folded:
        ops = ", ".join(f"{op} ×{n}" for op, n in folded.most_common())
        notes.append(
            f"{ops}: computed from constants only — runtimes fold them at load time, so their "
            "FLOPs are not counted and their outputs count as weights, not activations"
        )
    for (op, reason), names in not_counted.items():
        if reason.startswith("control flow"):
            inner = sum(_nested_nodes(nodes[i]) for i in order if _op_key(nodes[i]) == op)
            notes.append(
                f"{op} ×{len(names)} ({_shown(names)}): the {inner} ops of its subgraphs are in "
                "the histogram but their MACs/FLOPs are not counted — the branch taken or the "
                "trip count depends on the data"
            )
        else:
            notes.append(f"{op} ×{len(names)} ({_shown(names)}): {reason} — MACs/FLOPs not counted")
    return notes


def _as_loaded(
    model: onnx.ModelProto | LoadedModel | str | Path,
) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    return loaded.proto, str(loaded.path)


def _inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    # Calls to model-local functions (some exporters emit one per module) are inlined so
    # their bodies are costed like any other node.
    if not proto.functions:
        return proto
    try:
        return onnx.inliner.inline_local_functions(proto)
    except Exception:  # > 2 GB, or a malformed function: analyse the calls as they are
        return proto


def _shape_of(info: TensorInfo | None) -> tuple[int, ...] | None:
    return None if info is None else info.shape


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reshape_bound(c: ShapeConflict, value: int) -> int | None:
    """The dim value at which a Reshape's element counts (got: input, limit: target) meet.
    Usually the input scales with the dim and the target is fixed; an export that froze the
    input's extent (a traced constant) while the target is read from the input's shape has
    the dim in the target instead."""
    in_target = value in c.target_dims and value not in c.source_dims
    num, den = (c.got * value, c.limit) if in_target else (c.limit * value, c.got)
    return num // den if num % den == 0 and num >= den else None


def _conflict_error(c: ShapeConflict, dims: list[DynamicDim]) -> ShapeError:
    """The one-line error for a node that cannot run, naming the open dim behind it."""
    where = f"node {c.node!r} {c.detail}"
    pick: DynamicDim | None = None
    bound = ""
    if c.op_type == "Gather":  # positions 0..dim-1 (plus an offset) index the table
        near = [d for d in dims if d.value > 1]
        pick = min(near, key=lambda d: abs(d.value - c.got), default=None)
        if pick is not None:
            bound = f"at most {pick.value - (c.got - c.limit)}"
    elif c.op_type == "Reshape":
        fits = [(d, b) for d in dims if d.value > 1 and (b := _reshape_bound(c, d.value))]
        if fits:
            pick, exact = max(fits, key=lambda f: f[0].value)
            bound = f"exactly {exact}"
    else:  # one extent of the clashing axis comes from the dim, the other is the limit
        for d in dims:
            if d.value in (c.got, c.limit):
                pick = d
                bound = str(c.limit if d.value == c.got else c.got)
                break
    if pick is None or not bound:
        pick = max(dims, key=lambda d: d.value, default=None)
        if pick is None:
            return ShapeError(f"the model cannot run at its own fixed shapes: {where}")
        return ShapeError(
            f"{pick.label}={pick.value} does not fit the model: {where} — choose another "
            f"{pick.label} with --shape"
        )
    return ShapeError(
        f"{pick.label}={pick.value} does not fit the model: {where}, which allows "
        f"{pick.label} {bound if bound[0].isalpha() else 'up to ' + bound} — give "
        f"--shape {pick.label}=… within that"
    )


def analyze(
    model: onnx.ModelProto | LoadedModel | str | Path,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    *,
    available_bytes: int | None = None,
) -> ModelAnalysis:
    """Analyse MODEL at concrete input shapes.

    SHAPES are parsed ``--shape`` overrides (input names or symbolic dims); BATCH sets the
    first axis of dynamic inputs. Raises ModelError for a file that cannot be loaded and
    ShapeError for overrides that do not fit the model: shapes it cannot run (a clashing
    broadcast, a fixed Reshape, a Gather past a position table) and shapes whose inputs or
    activations exceed ``available_bytes`` (default: this machine's available memory).
    """
    proto, source_path = _as_loaded(model)
    proto = _inline_functions(proto)
    graph = proto.graph
    inputs, outputs = graph_io(proto)
    resolved = resolve_input_shapes(inputs, shapes, batch)
    if available_bytes is None:
        available_bytes = int(psutil.virtual_memory().available)
    # Before anything is inferred or folded: a dim of 2**40 must fail here, not in an OOM.
    check_fits_memory(
        inputs,
        resolved.shapes,
        input_bytes(inputs, resolved.shapes),
        available_bytes,
        "the inputs alone",
    )
    symbols = {
        d: resolved.shapes[spec.name][axis]
        for spec in inputs
        if spec.shape is not None
        for axis, d in enumerate(spec.shape)
        if isinstance(d, str)
    }
    input_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.input}

    top_weights = _graph_weights(graph)
    inventory = _inventory(graph, top_weights)
    uncounted: list[str] = []

    weight_infos = {name: w.info for name, w in top_weights.items()}
    real_inputs = {spec.name: resolved.shapes[spec.name] for spec in inputs}
    nodes = list(graph.node)
    reads = [node_reads(n) for n in nodes]
    order, complete = topological_order(nodes, reads, [*real_inputs, *top_weights])
    if not complete:
        uncounted.append("the graph has a cycle: memory figures follow the stored node order")
    infos, notes, values = infer_with_values(
        proto, real_inputs, input_types, weight_infos, symbols, order
    )
    uncounted.extend(notes)
    conflicts = shape_conflicts(nodes, order, infos, values, weight_infos)
    if conflicts:
        raise _conflict_error(conflicts[0], dynamic_dims(inputs, resolved.shapes))

    costs, not_counted, constants = _node_costs(nodes, order, infos, top_weights)
    uncounted.extend(_cost_notes(nodes, order, costs, not_counted))
    macs_by_op: Counter[str] = Counter()
    flops_by_op: Counter[str] = Counter()
    for c, i in zip(costs, order, strict=True):
        key = _op_key(nodes[i])
        macs_by_op[key] += c.macs
        flops_by_op[key] += c.flops

    sizes = {name: info.nbytes for name, info in infos.items()}
    memory = activation_memory(
        nodes, reads, order, list(real_inputs), [o.name for o in graph.output], constants, sizes
    )
    check_fits_memory(
        inputs,
        resolved.shapes,
        memory.peak_bytes + inventory.weight_bytes,
        available_bytes,
        "the weights and activations",
    )
    if memory.unknown:
        uncounted.append(
            f"{_plural(len(memory.unknown), 'activation tensor')} of unknown shape "
            f"({_shown(memory.unknown)}) "
            "left out of the activation memory figures"
        )

    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    return ModelAnalysis(
        inputs=inputs,
        outputs=outputs,
        opset=opsets.get("ai.onnx", 0),
        ir_version=int(proto.ir_version),
        producer=producer,
        input_shapes=dict(resolved.shapes),
        assumed=list(resolved.assumed),
        params=inventory.params,
        weight_bytes=inventory.weight_bytes,
        macs=sum(c.macs for c in costs),
        flops=sum(c.flops for c in costs),
        macs_by_op=dict(macs_by_op),
        flops_by_op=dict(flops_by_op),
        nodes=costs,
        peak_activation_bytes=memory.peak_bytes,
        naive_activation_bytes=memory.naive_bytes,
        op_histogram=dict(inventory.histogram.most_common()),
        uncounted=uncounted,
        opsets=opsets,
        constant_node_weight_bytes=inventory.constant_node_bytes,
        subgraph_nodes=inventory.subgraph_nodes,
        output_shapes={o.name: _shape_of(infos.get(o.name)) for o in outputs},
        source_path=source_path,
    )

"""Topological order of a graph and the activation memory a static planner needs.

Each activation tensor lives from the step that produces it (graph inputs: from the first
step) to the step of its last consumer (graph outputs: to the last step). The peak of the
sum of live tensors over the steps is what a memory planner that reuses freed buffers can
reach; the naive figure gives every tensor its own buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx


def subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node's subgraphs read, recursively (outer-scope captures among them)."""
    names: set[str] = set()
    stack = [
        a
        for a in node.attribute
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    ]
    while stack:
        attr = stack.pop()
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(n for n in inner.input if n)
                stack.extend(
                    a
                    for a in inner.attribute
                    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                )
    return names


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Names NODE reads: its inputs, and for If/Loop/Scan what its subgraphs capture."""
    reads = [n for n in node.input if n]
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        reads.extend(sorted(subgraph_names(node) - set(reads)))
    return reads


def topological_order(
    nodes: Sequence[onnx.NodeProto], reads: Sequence[Sequence[str]], available: Iterable[str]
) -> tuple[list[int], bool]:
    """Node indices in an order where producers precede consumers, and whether it is complete.

    The stored order is kept when it is already valid (ONNX requires it; most files obey).
    Names produced by no node (graph inputs, weights, outer-scope captures) never block.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer.setdefault(out, i)
    ready = set(available)
    in_order = True
    for i, node in enumerate(nodes):
        if any(n not in ready and producer.get(n, i) != i for n in reads[i]):
            in_order = False
            break
        ready.update(o for o in node.output if o)
    if in_order:
        return list(range(len(nodes))), True
    # Kahn's algorithm over producer→consumer edges, seeded in stored order.
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        deps = {producer[n] for n in reads[i] if n in producer and producer[n] != i}
        waiting[i] = len(deps)
        for d in deps:
            consumers.setdefault(d, []).append(i)
    queue = deque(i for i in range(len(nodes)) if waiting[i] == 0)
    order: list[int] = []
    while queue:
        i = queue.popleft()
        order.append(i)
        for c in consumers.get(i, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                queue.append(c)
    complete = len(order) == len(nodes)
    if not complete:  # a cycle: keep the rest in stored order so every node is still costed
        placed = set(order)
        order.extend(i for i in range(len(nodes)) if i not in placed)
    return order, complete


@dataclass(frozen=True)
class ActivationMemory:
    peak_bytes: int
    naive_bytes: int
    peak_step: int  # position in the order where the peak happens (-1: no nodes)
    unknown: list[str]  # activation tensors whose size is unknown (counted as 0)


def activation_memory(
    nodes: Sequence[onnx.NodeProto],
    reads: Sequence[Sequence[str]],
    order: Sequence[int],
    graph_inputs: Sequence[str],
    graph_outputs: Sequence[str],
    weights: Iterable[str],
    sizes: Mapping[str, int | None],
) -> ActivationMemory:
    """Peak and naive activation bytes of NODES run in ORDER (weights excluded)."""
    weight_names = set(weights)
    steps = len(order)
    last = max(steps - 1, 0)
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for name in graph_inputs:
        if name not in weight_names:
            start[name] = end[name] = 0
    for step, i in enumerate(order):
        for name in reads[i]:
            if name in start:
                end[name] = max(end[name], step)
        for name in nodes[i].output:
            if name and name not in weight_names and name not in start:
                start[name] = end[name] = step
    for name in graph_outputs:
        if name in start:
            end[name] = last
    delta = [0] * (steps + 2)
    naive = 0
    unknown: list[str] = []
    for name, first in start.items():
        size = sizes.get(name)
        if size is None:
            unknown.append(name)
            continue
        naive += size
        delta[first] += size
        delta[end[name] + 1] -= size
    peak, peak_step, live = 0, -1 if steps == 0 else 0, 0
    for step in range(max(steps, 1)):
        live += delta[step]
        if live > peak:
            peak, peak_step = live, step
    return ActivationMemory(peak, naive, peak_step if steps else -1, unknown)

"""Topological ordering and the liveness sweep, on graphs small enough to check by hand."""

from __future__ import annotations

from onnx import helper

from edgeshift.model.liveness import activation_memory, node_reads, topological_order


def test_cycle_keeps_every_node_and_says_so() -> None:
    nodes = [
        helper.make_node("Relu", ["b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Relu", ["x"], ["c"]),
    ]
    reads = [node_reads(n) for n in nodes]
    order, complete = topological_order(nodes, reads, ["x"])
    assert not complete
    assert sorted(order) == [0, 1, 2]
    assert order[0] == 2  # the only node whose inputs are available runs first


def test_unknown_sizes_are_listed_and_counted_as_zero() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    reads = [node_reads(n) for n in nodes]
    memory = activation_memory(
        nodes, reads, [0, 1], ["x"], ["y"], [], {"x": 100, "a": None, "y": 100}
    )
    # step 0: x + a(?) = 100; step 1: a(?) + y = 100.
    assert memory.peak_bytes == 100
    assert memory.naive_bytes == 200
    assert memory.unknown == ["a"]


def test_a_graph_without_nodes_holds_its_inputs() -> None:
    memory = activation_memory([], [], [], ["x"], ["x"], [], {"x": 64})
    assert (memory.peak_bytes, memory.naive_bytes, memory.peak_step) == (64, 64, -1)

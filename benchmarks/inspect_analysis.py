"""How fast `analyze` is beside loading the model, and what the skeleton saves.

Builds BERT-like encoders in memory (weights as initializers, and the same weights in
Constant nodes as Paddle exports them), then times side by side, rounds interleaved, medians:
  load      onnx.load of the file (the floor: every verb pays it)
  analyze   edgeshift's analyze() on the loaded proto
  infer     onnx shape inference with data propagation on the *full* model — what analyze
            would cost if it ran inference on a copy of the model with its weights
and prints ratios, plus the planned-peak / no-reuse activation memory ratio.
Run: ``python benchmarks/inspect_analysis.py [--rounds 5] [--layers 6] [--hidden 512]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from edgeshift.model.analysis import analyze


def encoder(layers: int, hidden: int, heads: int, constants_in_nodes: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def weight(name: str, *shape: int) -> str:
        weights.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def shape_const(name: str, values: list[int]) -> str:
        weights.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    head_dim = hidden // heads
    split = shape_const("split_shape", [0, 0, heads, head_dim])
    merge = shape_const("merge_shape", [0, 0, hidden])
    x = "x"
    for i in range(layers):
        p = f"l{i}_"

        def linear(inp: str, out: str, n_in: int, n_out: int, p: str = p) -> str:
            nodes.append(
                helper.make_node(
                    "MatMul", [inp, weight(p + out + "_w", n_in, n_out)], [p + out + "_mm"]
                )
            )
            nodes.append(
                helper.make_node("Add", [p + out + "_mm", weight(p + out + "_b", n_out)], [p + out])
            )
            return p + out

        q, k, v = (linear(x, name, hidden, hidden) for name in ("q", "k", "v"))
        for t in (q, k, v):
            nodes.append(helper.make_node("Reshape", [t, split], [t + "_h"]))
        nodes.append(helper.make_node("Transpose", [q + "_h"], [q + "_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Transpose", [k + "_h"], [k + "_t"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Transpose", [v + "_h"], [v + "_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("MatMul", [q + "_t", k + "_t"], [p + "scores"]))
        nodes.append(helper.make_node("Softmax", [p + "scores"], [p + "probs"], axis=-1))
        nodes.append(helper.make_node("MatMul", [p + "probs", v + "_t"], [p + "ctx_t"]))
        nodes.append(helper.make_node("Transpose", [p + "ctx_t"], [p + "ctx_h"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [p + "ctx_h", merge], [p + "ctx"]))
        attn = linear(p + "ctx", "o", hidden, hidden)
        nodes.append(helper.make_node("Add", [x, attn], [p + "res1"]))
        nodes.append(helper.make_node(
            "LayerNormalization", [p + "res1", weight(p + "ln1_g", hidden), weight(p + "ln1_b", hidden)],
            [p + "ln1"], axis=-1))  # fmt: skip
        up = linear(p + "ln1", "up", hidden, 4 * hidden)
        nodes.append(helper.make_node("Gelu", [up], [p + "gelu"]))
        down = linear(p + "gelu", "down", 4 * hidden, hidden)
        nodes.append(helper.make_node("Add", [p + "ln1", down], [p + "res2"]))
        nodes.append(helper.make_node(
            "LayerNormalization", [p + "res2", weight(p + "ln2_g", hidden), weight(p + "ln2_b", hidden)],
            [p + "ln2"], axis=-1))  # fmt: skip
        x = p + "ln2"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    inits = weights
    if constants_in_nodes:
        consts = [helper.make_node("Constant", [], [w.name], value=w) for w in weights]
        nodes, inits = consts + nodes, []
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _median_s(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(rounds: int, layers: int, hidden: int) -> None:
    console = Console(width=140)
    table = Table(title=f"analyze() beside load, {layers} layers × hidden {hidden}, seq 128")
    for col in ("model", "file MB", "load s", "analyze s", "full infer s", "analyze/load",
                "analyze/full infer", "peak/no-reuse mem", "GMACs", "uncounted"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for label, in_nodes in (("initializers", False), ("Constant nodes", True)):
            path = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            onnx.save(encoder(layers, hidden, 8, in_nodes), path)
            proto = onnx.load(str(path))
            results: dict[str, list[float]] = {"load": [], "analyze": [], "infer": []}
            for _ in range(rounds):  # interleaved so a noisy neighbour hurts all three alike
                results["load"].append(_median_s(lambda p=path: onnx.load(str(p)), 1))
                results["analyze"].append(_median_s(lambda m=proto: analyze(m), 1))
                results["infer"].append(
                    _median_s(
                        lambda m=proto: onnx.shape_inference.infer_shapes(m, data_prop=True), 1
                    )
                )
            load_s, analyze_s, infer_s = (statistics.median(results[k]) for k in results)
            a = analyze(proto)
            table.add_row(
                label,
                f"{path.stat().st_size / 1e6:.0f}",
                f"{load_s:.3f}",
                f"{analyze_s:.3f}",
                f"{infer_s:.3f}",
                f"{analyze_s / load_s:.2f}",
                f"{analyze_s / infer_s:.2f}",
                f"{a.peak_activation_bytes / a.naive_activation_bytes:.3f}",
                f"{a.macs / 1e9:.3f}",
                str(len(a.uncounted)),
            )
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    run(args.rounds, args.layers, args.hidden)

"""Measured sensitivity: a chain built so that exactly two layers break int8 is recovered by
keeping exactly those two in float, within budget, with a bounded number of builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeshift.model.repair import repair_for_quantization
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.recipes import BuildContext, Variant
from edgeshift.optimize.recipes.ort_static_int8 import OrtStaticInt8
from edgeshift.optimize.recovery import recover_accuracy

WIDTH = 32
LAYERS = 8
BROKEN = ("fc2", "fc5")
OUTLIER = 1000.0  # ~3000x the other weights: a per-channel int8 step of ~8 rounds them to 0


def two_broken_chain() -> onnx.ModelProto:
    """Eight Gemm+Relu layers. Feature 0 entering fc2 and fc5 is always exactly 0 (the layer
    before gives it zero weights and bias), and row 0 of their weights is OUTLIER: in float
    that row multiplies 0 and is harmless, but it sets every output channel's int8 scale, so
    the real weights round to 0 and the layer's output is lost. Every other layer has plain
    Gaussian weights, which int8 keeps to ~1% error."""
    rng = np.random.default_rng(7)
    nodes, inits = [], []
    current = "x"
    for i in range(LAYERS):
        name = f"fc{i}"
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) * 1.4
        b = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
        if f"fc{i + 1}" in BROKEN:
            w[:, 0], b[0] = 0.0, 0.0  # output feature 0 is 0 for every input
        if name in BROKEN:
            w[0, :] = OUTLIER
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"], name=name))
        last = i == LAYERS - 1
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}"))
        current = f"g{i}" if last else f"r{i}"
    graph = helper.make_graph(
        nodes,
        "two_broken_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", WIDTH])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


BUDGET = 0.01  # the embedding budget: mean cosine >= 0.99


def _context(tmp_path: Path, quick: bool = False) -> tuple[BuildContext, np.ndarray, np.ndarray]:
    repaired = repair_for_quantization(two_broken_chain()).model
    path = tmp_path / "repaired.onnx"
    onnx.save(repaired, str(path))
    x = np.random.default_rng(3).standard_normal((128, WIDTH)).astype(np.float32)
    ctx = BuildContext(
        source_path=path,
        repaired_path=path,
        repaired=repaired,
        workdir=tmp_path,
        calibration=[{"x": x[i : i + 1]} for i in range(16)],
        host=detect_host(),
        seed=0,
        quick=quick,
        is_transformer=False,
    )
    held_out = x[16:]
    return ctx, held_out, _run(path, held_out)


def _cosine_evaluator(held_out: np.ndarray, reference: np.ndarray):  # type: ignore[no-untyped-def]
    def evaluate(variant: Variant) -> tuple[float, float]:
        out = _run(variant.model_path, held_out)
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
        score = float(np.mean(np.sum(out * reference, axis=1) / np.maximum(norms, 1e-12)))
        return score, 1.0 - score

    return evaluate


def test_two_broken_layers_found_rest_stay_int8(tmp_path: Path) -> None:
    ctx, held_out, reference = _context(tmp_path)
    evaluate = _cosine_evaluator(held_out, reference)
    recipe = OrtStaticInt8()
    quantized = recipe.build(ctx)
    full_drop = evaluate(quantized)[1]
    assert full_drop > 0.5  # the premise: all-int8 destroys the output

    outcome = recover_accuracy(recipe, ctx, quantized, evaluate, BUDGET, quantized_drop=full_drop)

    assert outcome.variant is not None, outcome.reason
    assert sorted(outcome.float_nodes) == sorted(BROKEN)
    assert outcome.drop is not None and outcome.drop <= BUDGET
    # The file is that float set's build (restore-one builds of other nodes wrote their own).
    assert evaluate(outcome.variant)[1] == outcome.drop
    assert len({s.nodes for s in outcome.steps}) == len(outcome.steps) == outcome.builds
    # Every other layer really is int8 in the artifact: its weight comes through a DQ node.
    model = onnx.load(str(outcome.variant.model_path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "Gemm":
            assert (node.input[1] in dequantized) == (node.name not in BROKEN), node.name
    # Eight restore-one builds, then float sets {1} and {2} of the measured order.
    assert len(outcome.measured) == LAYERS
    assert outcome.builds == LAYERS + 1  # {top-1} is a restore-one build already made
    assert outcome.builds <= LAYERS + 2 * int(np.ceil(np.log2(LAYERS))) + 1


def test_masked_layer_keeps_its_attributed_place(tmp_path: Path) -> None:
    # Restoring fc2 alone leaves fc5 destroying the output: no gain is measured for fc2, so
    # it must not fall behind harmless layers whose restore changes the output by noise.
    ctx, held_out, reference = _context(tmp_path)
    evaluate = _cosine_evaluator(held_out, reference)
    recipe = OrtStaticInt8()
    outcome = recover_accuracy(recipe, ctx, recipe.build(ctx), evaluate, BUDGET)
    assert outcome.order[:2] == ["fc5", "fc2"]
    drops = dict((name, drop) for name, drop, _ in outcome.measured)
    assert drops["fc5"] < drops["fc2"] - BUDGET  # fc5's restore is the measured gain


def test_quick_keeps_the_cheap_path(tmp_path: Path) -> None:
    ctx, held_out, reference = _context(tmp_path, quick=True)
    evaluate = _cosine_evaluator(held_out, reference)
    recipe = OrtStaticInt8()
    outcome = recover_accuracy(
        recipe, ctx, recipe.build(ctx), evaluate, BUDGET, bisect=False, measure=False
    )
    assert outcome.measured == []
    assert sorted(outcome.float_nodes) == sorted(BROKEN)  # one-pass ranks them top two
    assert outcome.builds == 2  # float sets of 1 and 2 nodes


def test_each_float_set_builds_its_own_file(tmp_path: Path) -> None:
    ctx, _, _ = _context(tmp_path)
    recipe = OrtStaticInt8()
    paths = {recipe.variant_path(ctx, s) for s in ([], ["fc2"], ["fc5"], ["fc5", "fc2"])}
    assert len(paths) == 4
    assert recipe.variant_path(ctx, ["fc2", "fc5"]) == recipe.variant_path(ctx, ["fc5", "fc2"])

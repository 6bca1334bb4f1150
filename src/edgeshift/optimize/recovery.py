"""Accuracy recovery: find the layers whose quantization costs the accuracy, keep them in float.

Sensitivity is measured in one pass: the float model and the quantized one run the same
calibration samples with every quantized node's inputs and output exposed, and each node is
charged the error it *adds* — the normalized error of its output minus the worst normalized
error already present on its inputs. A node whose own quantization is harmless but that sits
behind a bad one is therefore not blamed for it.

Fallback is then greedy on that ranking: keep the top 1, 2, 4, … nodes in float, rebuilding
and re-evaluating each time, until the candidate meets the budget; then (unless quick) bisect
between the last failing and the first passing count for the fewest float nodes. Each step
is a real build and a real evaluation, so the ranking only has to be roughly right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeshift.optimize.recipes import BuildContext, Recipe, Variant

SENSITIVITY_SAMPLES = 8


@dataclass
class RecoveryStep:
    float_nodes: int
    score: float | None
    drop: float | None
    error: str | None = None


@dataclass
class RecoveryOutcome:
    """The recovered variant (None if recovery failed), its score, and what it took."""

    variant: Variant | None
    score: float | None
    drop: float | None
    float_nodes: list[str]
    ranking: list[tuple[str, float]]
    steps: list[RecoveryStep] = field(default_factory=list)
    reason: str = ""


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of MODEL that also returns the tensors NAMES (those the graph produces)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    produced = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name in produced and name not in existing:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return out


def _run_all(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], threads: int
) -> list[dict]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # Basic level only: tensors stay where the graph names them (no fusion across them).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, f), strict=True)) for f in feeds]


def _normalized_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean squared error over mean squared reference (0: identical; 1: as large as the signal)."""
    num = sum(
        float(np.sum((c.astype(np.float64) - r) ** 2))
        for r, c in zip(reference, candidate, strict=True)
    )
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    return num / max(den, 1e-30)


def layer_sensitivity(
    float_model: onnx.ModelProto,
    quantized_path: Path,
    node_names: Sequence[str],
    feeds: list[dict[str, np.ndarray]],
    threads: int = 1,
) -> list[tuple[str, float]]:
    """(node, added normalized error) for each node in NODE_NAMES, most harmful first."""
    wanted = set(node_names)
    nodes = [n for n in float_model.graph.node if n.name in wanted]
    initializers = {i.name for i in float_model.graph.initializer}
    tensors: set[str] = set()
    for node in nodes:
        tensors.update(t for t in node.input if t and t not in initializers)
        tensors.add(node.output[0])
    ordered = sorted(tensors)
    quantized = onnx.load(str(quantized_path))
    float_runs = _run_all(_with_outputs(float_model, ordered), feeds, threads)
    quant_runs = _run_all(_with_outputs(quantized, ordered), feeds, threads)
    error: dict[str, float] = {}
    for name in ordered:
        ref = [r[name] for r in float_runs if name in r]
        got = [q[name] for q in quant_runs if name in q]
        if len(ref) != len(feeds) or len(got) != len(feeds):
            continue  # fused away or renamed in the quantized graph: no evidence either way
        if not np.issubdtype(ref[0].dtype, np.floating) or ref[0].shape != got[0].shape:
            continue
        error[name] = _normalized_error(ref, got)
    ranking: list[tuple[str, float]] = []
    for node in nodes:
        inputs = [error[t] for t in node.input if t in error]
        added = error.get(node.output[0], 0.0) - max(inputs, default=0.0)
        ranking.append((node.name, added))
    # Stable order for equal scores: graph order (earlier layers first).
    return sorted(ranking, key=lambda item: -item[1])


# A variant's (score, drop) in metric units; raises when the variant does not load or run.
Evaluate = Callable[[Variant], tuple[float, float]]


def recover_accuracy(
    recipe: Recipe,
    ctx: BuildContext,
    quantized: Variant,
    evaluate: Evaluate,
    max_drop: float,
    threads: int = 1,
    bisect: bool = True,
) -> RecoveryOutcome:
    """Keep the most sensitive nodes of QUANTIZED in float until it meets MAX_DROP."""
    nodes = recipe.quantized_nodes(ctx, quantized)
    feeds = ctx.calibration[:SENSITIVITY_SAMPLES]
    ranking = layer_sensitivity(ctx.repaired, quantized.model_path, nodes, feeds, threads)
    order = [name for name, _ in ranking]
    outcome = RecoveryOutcome(None, None, None, [], ranking)
    tried: dict[int, tuple[Variant, float, float] | None] = {}

    def attempt(count: int) -> tuple[Variant, float, float] | None:
        if count not in tried:
            try:
                variant = recipe.build(ctx, exclude=order[:count])
                score, drop = evaluate(variant)
            except Exception as exc:  # one failed rebuild ends that branch, not the search
                message = f"{type(exc).__name__}: {exc}"[:300]
                outcome.steps.append(RecoveryStep(count, None, None, message))
                tried[count] = None
                return None
            outcome.steps.append(RecoveryStep(count, score, drop))
            tried[count] = (variant, score, drop)
        return tried[count]

    failing, passing = 0, None
    count = 1
    while count < len(order):
        result = attempt(count)
        if result is not None and result[2] <= max_drop:
            passing = count
            break
        failing = count
        count *= 2
    if passing is None:
        outcome.reason = (
            f"still over budget with {failing} of {len(order)} quantized node(s) in float; "
            "more would leave (almost) nothing quantized"
        )
        return outcome
    if bisect:
        low, high = failing, passing  # low fails (or is 0), high passes
        while high - low > 1:
            mid = (low + high) // 2
            result = attempt(mid)
            if result is not None and result[2] <= max_drop:
                high = mid
            else:
                low = mid
        passing = high
    best = tried[passing]
    assert best is not None
    outcome.variant, outcome.score, outcome.drop = best
    outcome.float_nodes = order[:passing]
    outcome.reason = f"kept {passing} of {len(order)} quantized nodes in float"
    return outcome

"""Accuracy recovery: find the layers whose quantization costs the accuracy, keep them in float.

Sensitivity is first attributed in one pass: the float model and the quantized one run the
same calibration samples with every quantized node's inputs and output exposed, and each node
is charged the error it *adds* — the normalized error of its output minus the worst normalized
error already present on its inputs. A node whose own quantization is harmless but that sits
behind a bad one is therefore not blamed for it.

Then (unless quick) it is measured: for the top :data:`MEASURED_NODES` of that ranking (all
nodes when there are that few), the model is rebuilt with everything quantized but that one
node and scored. Attribution misjudges what it cannot see (a layer whose error the next one
amplifies, a metric that ignores most of the output); a real build has no such blind spot.

Fallback is greedy on the resulting ranking: keep the top 1, 2, 4, … nodes in float,
rebuilding and re-evaluating each time, until the candidate meets the budget; then (unless
quick) bisect between the last failing and the first passing count for the fewest float nodes,
and prune that set: each of its nodes (when it has at least PRUNE_MIN_NODES) is tried back in
int8, lowest-ranked first, and stays int8 when the budget still holds. Builds are memoized by
float set, so at most MEASURED_NODES + 2·log2(nodes) + 1 + PRUNE_MAX_BUILDS are made.
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
    stage: str = "fallback"  # "sensitivity": restore-one; "fallback": a float set; "prune"
    nodes: tuple[str, ...] = ()  # the nodes kept in float


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
    # (node, drop, output error) of each restore-one build; empty when not measured.
    measured: list[tuple[str, float, float | None]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # the ranking the fallback walked
    builds: int = 0  # real builds recovery made (each also evaluated)


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


# Activations ORT's QDQ quantizer folds into the range of the tensor before them: the
# quantized graph has no Relu, and the tensor before it is gone (renamed to the Relu's output).
_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _observable(float_model: onnx.ModelProto, quantized: onnx.ModelProto) -> dict[str, str]:
    """Float tensor -> the tensor to compare it by, for tensors the quantized graph lost to a
    folded activation: their activation's output (an error after a Relu still says how much
    the layer before it added)."""
    produced = {o for n in quantized.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in float_model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    mapping: dict[str, str] = {}
    for name, consumers in readers.items():
        if name in produced or len(consumers) != 1:
            continue
        (consumer,) = consumers
        if consumer.op_type in _FOLDED_ACTIVATIONS and consumer.output[0] in produced:
            mapping[name] = consumer.output[0]
    return mapping


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
    quantized = onnx.load(str(quantized_path))
    seen = _observable(float_model, quantized)
    tensors: set[str] = set()
    for node in nodes:
        tensors.update(seen.get(t, t) for t in node.input if t and t not in initializers)
        tensors.add(seen.get(node.output[0], node.output[0]))
    ordered = sorted(tensors)
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
        inputs = [error[seen.get(t, t)] for t in node.input if seen.get(t, t) in error]
        added = error.get(seen.get(node.output[0], node.output[0]), 0.0) - max(inputs, default=0.0)
        ranking.append((node.name, added))
    # Stable order for equal scores: graph order (earlier layers first).
    return sorted(ranking, key=lambda item: -item[1])


# Restore-one builds: every quantized node when there are at most this many, else the top this
# many of the one-pass ranking. 16 keeps the measuring under ~16 rebuilds (ORT static reuses
# its calibration ranges, so each is a graph rewrite plus one evaluation); a node whose own
# quantization matters adds error the one-pass attribution sees, so it lands in that top 16.
MEASURED_NODES = 16


# A variant's (score, drop) in metric units; raises when the variant does not load or run.
Evaluate = Callable[[Variant], tuple[float, float]]


def _output_error(
    float_outputs: list[dict], variant: Variant, feeds: list[dict[str, np.ndarray]], threads: int
) -> float | None:
    """Normalized error of VARIANT's graph outputs against the float model's on FEEDS, run on
    ORT (every recipe writes ONNX); None when ORT cannot run it. It separates restore-one
    builds whose metric drops tie (a metric saturates when two layers are broken)."""
    try:
        runs = _run_all(onnx.load(str(variant.model_path)), feeds, threads)
    except Exception:  # an OpenVINO-only graph: rank by the metric alone
        return None
    names = [n for n in float_outputs[0] if n in runs[0]]
    ref = [f[n] for f in float_outputs for n in names]
    got = [r[n] for r in runs for n in names]
    return _normalized_error(ref, got) if names else None


def recover_accuracy(
    recipe: Recipe,
    ctx: BuildContext,
    quantized: Variant,
    evaluate: Evaluate,
    max_drop: float,
    threads: int = 1,
    bisect: bool = True,
    measure: bool = True,
    measured_nodes: int = MEASURED_NODES,
    quantized_drop: float | None = None,
) -> RecoveryOutcome:
    """Keep the fewest nodes of QUANTIZED in float that bring it within MAX_DROP.

    The nodes are ranked by one-pass attribution; with MEASURE, the top MEASURED_NODES of
    that ranking are then re-ranked by real builds (everything int8 but that one node). The
    float set grows greedily along the ranking (1, 2, 4, … nodes) until a build meets the
    budget, and with BISECT the count is then bisected down to the fewest that still meets it.
    QUANTIZED_DROP is QUANTIZED's drop when the caller has it (saves an evaluation).
    """
    nodes = recipe.quantized_nodes(ctx, quantized)
    feeds = ctx.calibration[:SENSITIVITY_SAMPLES]
    ranking = layer_sensitivity(ctx.repaired, quantized.model_path, nodes, feeds, threads)
    order = [name for name, _ in ranking]
    outcome = RecoveryOutcome(None, None, None, [], ranking)
    tried: dict[tuple[str, ...], tuple[Variant, float, float] | None] = {}

    def attempt(exclude: Sequence[str], stage: str) -> tuple[Variant, float, float] | None:
        key = tuple(sorted(exclude))
        if key not in tried:
            outcome.builds += 1
            try:
                variant = recipe.build(ctx, exclude=list(exclude))
                score, drop = evaluate(variant)
            except Exception as exc:  # one failed rebuild ends that branch, not the search
                message = f"{type(exc).__name__}: {exc}"[:300]
                outcome.steps.append(RecoveryStep(len(key), None, None, message, stage, key))
                tried[key] = None
                return None
            outcome.steps.append(RecoveryStep(len(key), score, drop, None, stage, key))
            tried[key] = (variant, score, drop)
        return tried[key]

    if measure and len(order) > 1:
        full_drop = evaluate(quantized)[1] if quantized_drop is None else quantized_drop
        order = _measured_order(
            order, quantized, max_drop, measured_nodes, attempt, outcome, full_drop, ctx, threads
        )
    outcome.order = order
    return _fallback(order, attempt, outcome, max_drop, bisect)


def _measured_order(
    order: list[str],
    quantized: Variant,
    max_drop: float,
    measured_nodes: int,
    attempt: Callable[[Sequence[str], str], tuple[Variant, float, float] | None],
    outcome: RecoveryOutcome,
    full_drop: float,
    ctx: BuildContext,
    threads: int,
) -> list[str]:
    """ORDER re-ranked by restore-one builds: the node whose restoring gains the most first,
    by drop, then by output error; a node with no measurable gain keeps its one-pass place
    after those that have one (unmeasured nodes come last).

    A gain under a quarter of the budget in drop, or under 1% of the full build's output
    error, is no evidence: with two broken layers, restoring either alone can leave the
    output as broken as before (the other still destroys it), and noise must not then rank
    a harmless node above the masked one."""
    feeds = ctx.calibration[:SENSITIVITY_SAMPLES]
    measured = order[:measured_nodes]
    float_outputs = _run_all(ctx.repaired, feeds, threads)
    full_error = _output_error(float_outputs, quantized, feeds, threads)
    keys: dict[str, tuple[float, float, int]] = {}
    for rank, name in enumerate(measured):
        result = attempt([name], "sensitivity")
        if result is None:
            keys[name] = (0.0, 0.0, len(order) + rank)  # a failed build is evidence of nothing
            continue
        variant, _, drop = result
        error = _output_error(float_outputs, variant, feeds, threads)
        outcome.measured.append((name, drop, error))
        drop_gain = full_drop - drop
        error_gain = 0.0 if error is None or full_error is None else full_error - error
        keys[name] = (
            drop_gain if drop_gain >= max_drop / 4 else 0.0,
            error_gain if full_error and error_gain >= 0.01 * full_error else 0.0,
            rank,
        )
    ranked = sorted(measured, key=lambda name: (-keys[name][0], -keys[name][1], keys[name][2]))
    return ranked + order[measured_nodes:]


def _fallback(
    order: list[str],
    attempt: Callable[[Sequence[str], str], tuple[Variant, float, float] | None],
    outcome: RecoveryOutcome,
    max_drop: float,
    bisect: bool,
) -> RecoveryOutcome:
    """Float sets of the top 1, 2, 4, … of ORDER until one meets MAX_DROP, then bisection."""

    def passes(count: int) -> bool:
        result = attempt(order[:count], "fallback")
        return result is not None and result[2] <= max_drop

    failing, passing = 0, None
    count = 1
    while count < len(order):
        if passes(count):
            passing = count
            break
        failing = count
        count *= 2
    if passing is None:
        outcome.reason = (
            f"still over budget with {failing} of {len(order)} quantized node(s) in float "
            f"after {outcome.builds} build(s); more would leave (almost) nothing quantized"
        )
        return outcome
    if bisect:
        low, high = failing, passing  # low fails (or is 0), high passes
        while high - low > 1:
            mid = (low + high) // 2
            if passes(mid):
                high = mid
            else:
                low = mid
        passing = high
    float_set = order[:passing]
    pruned = 0
    if bisect and passing >= PRUNE_MIN_NODES:
        float_set, pruned = _prune(float_set, attempt, max_drop)
    best = attempt(float_set, "prune" if pruned else "fallback")  # cached: no new build
    assert best is not None
    outcome.variant, outcome.score, outcome.drop = best
    outcome.float_nodes = float_set
    dropped = f", {pruned} more re-quantized by pruning" if pruned else ""
    outcome.reason = (
        f"kept {len(float_set)} of {len(order)} quantized node(s) in float "
        f"({outcome.builds} build(s), {len(outcome.measured)} measured one at a time{dropped})"
    )
    return outcome


# Pruning: a prefix of the ranking that meets the budget can hold nodes it does not need
# (ranked high by a proxy, or needed only beside another that is now float too). Each node of
# a float set of at least PRUNE_MIN_NODES is tried back in int8, lowest-ranked first, at most
# PRUNE_MAX_BUILDS of them. Below PRUNE_MIN_NODES, bisection has already found the fewest.
PRUNE_MIN_NODES = 4
PRUNE_MAX_BUILDS = 16


def _prune(
    float_set: list[str],
    attempt: Callable[[Sequence[str], str], tuple[Variant, float, float] | None],
    max_drop: float,
) -> tuple[list[str], int]:
    """FLOAT_SET without the nodes that can go back to int8 one at a time while the budget
    still holds; returns the set and how many went back."""
    kept = list(float_set)
    for name in list(reversed(float_set))[:PRUNE_MAX_BUILDS]:
        trial = [n for n in kept if n != name]
        result = attempt(trial, "prune")
        if result is not None and result[2] <= max_drop:
            kept = trial
    return kept, len(float_set) - len(kept)

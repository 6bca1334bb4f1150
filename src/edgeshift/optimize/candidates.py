"""One candidate: build it with its recipe (and the recipe's alternatives), score it on the
held-out set, and recover accuracy where it falls short. Every failure becomes a verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeshift.errors import EdgeshiftError
from edgeshift.optimize.evaluate import Timing
from edgeshift.optimize.manifest import CandidateRecord
from edgeshift.optimize.metrics import Metric
from edgeshift.optimize.recipes import BuildContext, Recipe, Variant
from edgeshift.optimize.recovery import recover_accuracy
from edgeshift.runtime.base import Backend

# A variant's (score, drop, opened backend, seconds per eval run); raises if it cannot run.
EvaluateFn = Callable[[Variant], tuple[float, float, Backend, float]]


@dataclass
class Candidate:
    record: CandidateRecord
    variant: Variant | None = None
    backend: Backend | None = None
    seconds_per_run: float = 0.0
    timing: Timing | None = None
    recovered: bool = False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def describe_failure(exc: BaseException) -> str:
    """One line for a failed build or run. An EdgeshiftError's or RuntimeError's text is the
    whole story; other types are named, since a bare KeyError reads "type" and says nothing."""
    if isinstance(exc, EdgeshiftError) or type(exc) in (RuntimeError, Exception):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"[:300]


def try_candidate(
    recipe: Recipe,
    ctx: BuildContext,
    evaluate: EvaluateFn,
    metric: Metric,
    budget: float,
    recovery: bool,
    threads: int,
    bisect: bool,
) -> Candidate:
    """One recipe's candidate with its verdict; never raises (a failure is a verdict too)."""
    record = CandidateRecord(
        name=recipe.name,
        recipe=recipe.family,
        backend=recipe.backend,
        precision=recipe.precision,
        status="skipped",
        reason="",
    )
    skip = recipe.unavailable(ctx)
    if skip:
        record.reason = skip
        return Candidate(record)
    # The recipe's own settings first, then its alternatives while the budget is missed.
    best: tuple[Recipe, Candidate] | None = None
    tried: list[dict[str, Any]] = []
    for attempt in [recipe, *recipe.alternatives(ctx)]:
        this = _build_and_score(attempt, ctx, evaluate, record)
        tried.append({"params": this.record.params, "drop": this.record.drop})
        if best is None or _better(this, best[1]):
            if best is not None and best[1].backend is not None:
                best[1].backend.close()
            best = (attempt, this)
        elif this.backend is not None:
            this.backend.close()
        if best[1].backend is not None and (best[1].record.drop or 0.0) <= budget:
            break
    assert best is not None
    recipe, candidate = best
    record = candidate.record
    if len(tried) > 1:
        record.params = {**record.params, "settings_tried": tried}
    if candidate.backend is None or candidate.variant is None:
        return candidate  # failed: the reason is recorded
    backend, variant, drop = candidate.backend, candidate.variant, record.drop or 0.0
    if drop <= budget:
        record.status, record.reason = "accepted", "within budget"
        return candidate
    over = f"{metric.name} drop {drop:.4g} > budget {budget:.4g}"
    if not (recipe.quantized and recovery):
        record.status, record.reason = "rejected", over
        backend.close()
        candidate.backend = None
        return candidate
    backend.close()

    def score_variant(v: Variant) -> tuple[float, float]:
        s, d, b, _ = evaluate(v)
        b.close()
        return s, d

    outcome = recover_accuracy(
        recipe,
        ctx,
        variant,
        score_variant,
        budget,
        threads,
        bisect,
        measure=not ctx.quick,  # --quick: one-pass ranking only, no restore-one builds
        quantized_drop=drop,
    )
    record.recovery_steps = [
        {
            "stage": s.stage,
            "float_nodes": s.float_nodes,
            "nodes": list(s.nodes),
            "score": s.score,
            "drop": s.drop,
            "error": s.error,
        }
        for s in outcome.steps
    ]
    recovery_summary = {
        "builds": outcome.builds,
        "measured": [{"node": n, "drop": d, "output_error": e} for n, d, e in outcome.measured],
    }
    if outcome.variant is None:
        record.status, record.reason = "rejected", f"{over}; recovery: {outcome.reason}"
        record.params = {**record.params, "recovery": recovery_summary}
        candidate.backend = None
        return candidate
    tried_before = {k: v for k, v in record.params.items() if k == "settings_tried"}
    score, drop, backend, seconds_per_run = evaluate(outcome.variant)
    _fill(record, outcome.variant, backend, score, drop)  # the recovered build's params
    record.float_nodes = outcome.float_nodes
    record.params = {**record.params, **tried_before, "recovery": recovery_summary}
    record.status, record.reason = "accepted", f"recovered: {outcome.reason}"
    return Candidate(record, outcome.variant, backend, seconds_per_run, recovered=True)


def _better(this: Candidate, than: Candidate) -> bool:
    """A working candidate beats a failed one; of two working ones, the smaller drop wins."""
    if this.backend is None:
        return False
    return than.backend is None or (this.record.drop or 0.0) < (than.record.drop or 0.0)


def _build_and_score(
    recipe: Recipe,
    ctx: BuildContext,
    evaluate: EvaluateFn,
    template: CandidateRecord,
) -> Candidate:
    record = template.model_copy(deep=True)
    try:
        variant = recipe.build(ctx)
    except Exception as exc:  # any recipe failure is this candidate's verdict, not the search's
        record.status, record.reason = "failed", f"build failed: {describe_failure(exc)}"
        return Candidate(record)
    record.params = variant.params
    try:
        score, drop, backend, seconds_per_run = evaluate(variant)
    except Exception as exc:
        record.status, record.reason = "failed", f"does not run: {describe_failure(exc)}"
        return Candidate(record, variant)
    _fill(record, variant, backend, score, drop)
    return Candidate(record, variant, backend, seconds_per_run)


def _fill(
    record: CandidateRecord, variant: Variant, backend: Backend, score: float, drop: float
) -> None:
    record.score, record.drop = score, drop
    record.size_bytes = variant.model_path.stat().st_size
    record.runtime_options = backend.runtime_options()
    record.params = variant.params

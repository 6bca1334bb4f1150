"""Selection: time the candidates within budget side by side, drop recoveries that bought
accuracy with all their speed, and pick the fastest (ties to the smaller file). A plain
runtime default that missed the budget is timed too, so the report can name it when it is
faster than the choice (:func:`outside_budget_default`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from edgeshift.errors import ShapeError
from edgeshift.optimize.candidates import Candidate
from edgeshift.optimize.evaluate import measure_side_by_side
from edgeshift.optimize.manifest import OutsideBudgetDefault
from edgeshift.runtime.base import Backend

TIE_FRACTION = 0.02  # candidates within 2% of the fastest are tied: measurement noise


def measure_candidates(
    survivors: list[Candidate],
    feeds: list[dict[str, np.ndarray]],
    bench_seconds: float,
    min_iterations: int,
    warmup: int,
    rounds: int,
) -> None:
    bench_feeds = feeds[:4]
    iterations = [
        max(
            min_iterations,
            min(2000, int(bench_seconds / max(c.seconds_per_run, 1e-6))),
        )
        for c in survivors
    ]
    backends = [c.backend for c in survivors if c.backend is not None]
    fix_shapes(backends, bench_feeds)
    timings = measure_side_by_side(backends, bench_feeds, iterations, warmup, rounds)
    for candidate, timing in zip(survivors, timings, strict=True):
        candidate.timing = timing
        r = candidate.record
        r.p50_ms, r.p90_ms, r.mean_ms = timing.p50_ms, timing.p90_ms, timing.mean_ms
        r.throughput_items_s = timing.throughput_items_s


def fix_shapes(backends: list[Backend], feeds: list[dict[str, np.ndarray]]) -> None:
    """Specialise every backend to the feeds' shapes when they all share one, as
    `edgeshift bench` does before it measures: OpenVINO plans memory and picks kernels once
    for static shapes, where dynamic ones pay per call (measured on MiniLM seq 128 int8: ~20%
    of its latency). A backend that cannot be specialised is timed as it is."""
    shapes = {k: tuple(v.shape) for k, v in feeds[0].items()}
    if any({k: tuple(v.shape) for k, v in f.items()} != shapes for f in feeds[1:]):
        return
    for backend in backends:
        with contextlib.suppress(ShapeError):
            backend.fix_input_shapes(shapes)


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def set_speedups(survivors: list[Candidate], objective: str) -> None:
    """Speed-up over the original (always first) by the objective: p50 or throughput."""
    base = objective_key(survivors[0], objective)
    for candidate in survivors:
        candidate.record.speedup = base / objective_key(candidate, objective)


def objective_key(candidate: Candidate, objective: str) -> float:
    """Smaller is better: p50 latency, or inverse throughput."""
    t = candidate.timing
    assert t is not None
    return t.p50_ms if objective == "latency" else 1.0 / t.throughput_items_s


def reject_slow_recoveries(survivors: list[Candidate], objective: str) -> None:
    floats = [c for c in survivors if c.record.precision in ("fp32", "bf16", "fp16") and c.timing]
    if not floats:
        return
    fastest_float = min(floats, key=lambda c: objective_key(c, objective))
    for c in survivors:
        if c.recovered and objective_key(c, objective) >= objective_key(fastest_float, objective):
            c.record.status = "rejected"
            c.record.reason = (
                f"{c.record.reason}, but then no faster than {fastest_float.record.name} "
                f"({c.record.p50_ms:.3g} vs {fastest_float.record.p50_ms:.3g} ms p50)"
            )


def choose(candidates: list[Candidate], objective: str) -> Candidate:
    eligible = [c for c in candidates if c.record.status == "accepted" and c.timing is not None]
    best_key = min(objective_key(c, objective) for c in eligible)
    tied = [c for c in eligible if objective_key(c, objective) <= best_key * (1 + TIE_FRACTION)]
    winner = min(tied, key=lambda c: (c.record.size_bytes or 0, objective_key(c, objective)))
    winner.record.status = "chosen"
    winner.record.reason = (
        "fastest within budget"
        if len(tied) == 1
        else f"fastest within budget (smallest of {len(tied)} tied within {TIE_FRACTION:.0%})"
    )
    for c in eligible:
        if c is winner:
            continue
        if c in tied:
            c.record.reason = f"within budget, tied on speed with {winner.record.name} but larger"
        else:
            unit = "ms p50" if objective == "latency" else "items/s"
            mine = c.record.p50_ms if objective == "latency" else c.record.throughput_items_s
            theirs = (
                winner.record.p50_ms if objective == "latency" else winner.record.throughput_items_s
            )
            assert mine is not None and theirs is not None
            c.record.reason = f"within budget but slower: {_num(mine)} vs {_num(theirs)} {unit}"
    return winner


def openvino_default_precision(capabilities: Sequence[str]) -> str:
    """What OpenVINO's CPU plugin runs a model at with no config: bf16 where the CPU has it."""
    return "bf16" if "BF16" in capabilities else "fp32"


def rejected_defaults(candidates: list[Candidate], capabilities: Sequence[str]) -> list[Candidate]:
    """The plain runtime defaults that missed the budget but are still worth timing, so the
    report can say when one is faster than the chosen variant. ORT's default is the original
    (the reference, always within budget); OpenVINO's is its openvino-<default precision>
    candidate, which is the same model at the same precision, stated explicitly."""
    name = f"openvino-{openvino_default_precision(capabilities)}"
    return [
        c
        for c in candidates
        if c.record.name == name
        and c.record.status == "rejected"
        and c.variant is not None
        and c.record.drop is not None
    ]


def outside_budget_default(
    winner: Candidate,
    defaults: list[Candidate],
    metric_name: str,
    metric_unit: str,
    budget: float,
    objective: str,
) -> OutsideBudgetDefault | None:
    """The fastest timed default in DEFAULTS when it beats WINNER (beyond the tie margin)."""
    timed = [c for c in defaults if c.timing is not None and c.record.drop is not None]
    if not timed or winner.timing is None:
        return None
    fastest = min(timed, key=lambda c: objective_key(c, objective))
    faster = objective_key(winner, objective) / objective_key(fastest, objective)
    if faster <= 1 + TIE_FRACTION:
        return None
    r, w = fastest.record, winner.record
    assert r.drop is not None and r.p50_ms is not None
    runtime = f"OpenVINO's own default ({r.precision})"
    chosen = "the original (ORT fp32)" if w.recipe == "none" else f"the chosen {w.name}"
    line = (
        f"{runtime} is {faster:.2f}x faster than {chosen} but its {metric_name} drops "
        f"{r.drop:.3g} {metric_unit} (budget {budget:.3g}); not chosen"
    )
    return OutsideBudgetDefault(
        candidate=r.name,
        runtime=runtime,
        p50_ms=r.p50_ms,
        speedup_over_chosen=faster,
        speedup_over_original=r.speedup or 0.0,
        drop=r.drop,
        max_drop=budget,
        line=line,
    )

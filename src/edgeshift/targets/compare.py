"""One model on several targets, side by side, cheapest first among those that meet the SLO."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshift.errors import TargetError
from edgeshift.model.load import LoadedModel
from edgeshift.targets.estimate import Estimate, estimate, model_display_name


@dataclass
class Comparison:
    """Estimates sorted by: fits and meets the SLO first, then cost per million items."""

    model: str
    slo_ms: float | None
    batch: int
    rows: list[Estimate]
    meets_slo: dict[str, bool]  # target id -> fits and latency_ms <= slo_ms (True without SLO)
    answer: str  # one sentence with the numbers behind it
    tiers: dict[str, str] = field(default_factory=dict)  # target id -> tier


def _meets(e: Estimate, slo_ms: float | None) -> bool:
    return e.fits and math.isfinite(e.latency_ms) and (slo_ms is None or e.latency_ms <= slo_ms)


def rank(rows: Sequence[Estimate], slo_ms: float | None) -> list[Estimate]:
    """Targets that fit and meet the SLO first, each group by cost per million, then latency."""
    return sorted(rows, key=lambda e: (not _meets(e, slo_ms), e.usd_per_million, e.latency_ms))


def _answer(ranked: list[Estimate], slo_ms: float | None, tiers: Mapping[str, str]) -> str:
    slo = f"within {slo_ms:g} ms" if slo_ms is not None else "at any latency"
    ok = [e for e in ranked if _meets(e, slo_ms)]
    if not ok:
        fastest = min(ranked, key=lambda e: e.latency_ms)
        return (
            f"no target fits and runs {slo}; the fastest is {fastest.target_id} at "
            f"{fastest.latency_ms:.3g} ms"
        )
    best = ok[0]
    text = (
        f"{best.target_id} is the cheapest {slo}: {best.usd_per_million:.3g} USD per million "
        f"at {best.latency_ms:.3g} ms"
    )
    # The question users ask: is a CPU cheaper than a GPU here (or the reverse)?
    best_is_gpu = tiers.get(best.target_id) == "gpu"
    other = [e for e in ok[1:] if (tiers.get(e.target_id) == "gpu") != best_is_gpu]
    if other:
        o = other[0]
        kind = "CPU" if best_is_gpu else "GPU"
        ratio = o.usd_per_million / best.usd_per_million if best.usd_per_million > 0 else math.inf
        text += (
            f"; the cheapest {kind} target, {o.target_id}, costs {o.usd_per_million:.3g} "
            f"({ratio:.3g}x) at {o.latency_ms:.3g} ms"
        )
    missed = [e.target_id for e in ranked if not _meets(e, slo_ms)]
    if missed:
        text += f"; {', '.join(missed)} miss the SLO or do not fit"
    return text


def compare(
    model: str | Path | LoadedModel,
    targets: Sequence[Any],
    *,
    slo_ms: float | None = None,
    batch: int = 1,
    precision: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    usd_per_kwh: float = 0.15,
    utilization: float = 1.0,
    calibration: Any | None = None,
) -> Comparison:
    """Estimate MODEL on each of TARGETS (ids or Target objects) and rank them.

    PRECISION applies to every target that runs it; others use their default. Each row
    names the runtime and precision it assumes. The model is first checked as ``bench``
    loads it, on every runtime the rows name (ModelError if one refuses it). CALIBRATION
    (a ``host.PinnedCalibration``) pins the efficiencies.
    """
    from edgeshift.model.analysis import analyze
    from edgeshift.model.load import load_model
    from edgeshift.runtime.check import check_runs
    from edgeshift.targets.catalog import HOST_ID, get_target
    from edgeshift.targets.estimate import (
        _check_shapes,
        default_precision,
        normalize_target_precision,
        runtime_for,
        stored_precision,
    )
    from edgeshift.targets.host import host_target

    if not targets:
        raise TargetError(
            "no targets to compare — pass --targets A,B,C (ids from `edgeshift targets`)"
        )
    if slo_ms is not None and slo_ms <= 0:
        raise TargetError(f"--slo-ms must be > 0, not {slo_ms}")
    resolved = [
        (host_target(calibration=calibration) if t == HOST_ID and calibration else get_target(t))
        if isinstance(t, str)
        else t
        for t in targets
    ]
    loaded = model if isinstance(model, LoadedModel) else load_model(model)  # checker
    analysis = analyze(loaded, shapes=shapes, batch=batch)
    name = model_display_name(loaded.path)
    _check_shapes(analysis)
    if precision is not None:
        precision = normalize_target_precision(precision)
    stored = stored_precision(analysis)
    checked: set[str] = set()
    for t in resolved:
        p = precision if precision in t.precisions else None
        runtime = runtime_for(
            t, p or default_precision(t, stored, loaded.manifest), loaded.manifest
        )
        if runtime not in checked:
            check_runs(loaded, runtime, name, analysis)
            checked.add(runtime)
    rows = []
    for t in resolved:
        p = precision if precision in t.precisions else None
        e = estimate(analysis, t, batch=batch, precision=p, usd_per_kwh=usd_per_kwh,
                     utilization=utilization, calibration=calibration,
                     manifest=loaded.manifest)  # fmt: skip
        e.model = name
        rows.append(e)
    ranked = rank(rows, slo_ms)
    tiers = {t.id: t.tier for t in resolved}
    return Comparison(
        model=name,
        slo_ms=slo_ms,
        batch=batch,
        rows=ranked,
        meets_slo={e.target_id: _meets(e, slo_ms) for e in ranked},
        answer=_answer(ranked, slo_ms, tiers),
        tiers=tiers,
    )

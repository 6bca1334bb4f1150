"""The whole plan: options → MILP → explanations → baselines → simulation, as one result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshift.plan.explain import Explanation, NodeSuggestion, explain, option_cost_usd
from edgeshift.plan.options import Option, build_options
from edgeshift.plan.problem import Problem
from edgeshift.plan.queueing import min_servers
from edgeshift.plan.scenario import Simulation, load_scenario
from edgeshift.plan.simulate import SimResult, simulate_queue
from edgeshift.plan.solver import Solution, baseline_candidate, solve

BASELINES = ("cloud-gpu", "cloud-cpu", "edge")
# Simulated p99 within this factor of the prediction counts as agreement. The prediction is
# conservative (M/M/c wait on a near-constant service), so the simulation is expected lower.
AGREEMENT_FACTOR = 1.10
SIMULATION_BUDGET = 2_000_000  # simulated requests per plan, shared among its workloads
MIN_SIMULATED_REQUESTS = 4_000  # still ~36 samples above the 99th percentile


@dataclass
class PlanResult:
    """Everything ``edgeshift plan`` reports."""

    problem: Problem
    options: dict[str, list[Option]]
    solution: Solution
    explanations: dict[str, Explanation]
    baselines: dict[str, Solution]
    simulations: dict[str, SimResult] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    estimate_calls: int = 0
    # The host calibration the estimates rest on (host, date, figures; see
    # ``targets.host.PinnedCalibration.record``), None when they rest on default efficiencies.
    calibration: dict[str, Any] | None = None
    # (model key, target id, precision) -> runtime, precision and recipe the estimate assumes
    assumed: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return not self.solution.unplaced


def plan_problem(
    problem: Problem,
    *,
    simulation: Simulation | None = None,
    simulate: bool = True,
    suggestions: dict[str, list[NodeSuggestion]] | None = None,
    time_limit_s: float = 60.0,
) -> PlanResult:
    """Plan PROBLEM (pure apart from the clock): the solution, baselines and checks."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    options = build_options(problem)
    timings["options"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    solution = solve(problem, options, time_limit_s=time_limit_s)
    timings["solve"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    baselines = {
        kind: solve(problem, options, candidate=baseline_candidate(kind), time_limit_s=time_limit_s)
        for kind in BASELINES
    }
    timings["baselines"] = time.perf_counter() - t0
    explanations = explain(problem, options, solution, suggestions)
    sims: dict[str, SimResult] = {}
    if simulate:
        t0 = time.perf_counter()
        sims = simulate_solution(problem, solution, simulation or Simulation.model_validate({}))
        timings["simulate"] = time.perf_counter() - t0
    return PlanResult(problem, options, solution, explanations, baselines, sims, timings)


def simulate_solution(
    problem: Problem, solution: Solution, settings: Simulation
) -> dict[str, SimResult]:
    """Simulate each placed workload at its peak rate on its chosen replicas.

    Identical queues are simulated once, and a large plan shares ``SIMULATION_BUDGET``
    requests among its workloads (never fewer than ``MIN_SIMULATED_REQUESTS`` each) so that
    500 workloads still simulate in seconds.
    """
    placed = [(name, o) for name, o in solution.chosen.items() if o is not None]
    per_workload = max(
        MIN_SIMULATED_REQUESTS, min(settings.requests, SIMULATION_BUDGET // max(len(placed), 1))
    )
    seen: dict[tuple[float, float, int, float], SimResult] = {}
    out: dict[str, SimResult] = {}
    for name, option in placed:
        key = (option.queue_rps, option.service_ms, option.queue_servers, option.network_ms)
        if key not in seen:
            seen[key] = simulate_queue(
                option.queue_rps,
                option.service_ms,
                option.queue_servers,
                requests=per_workload,
                network_ms=option.network_ms,
                service=settings.service,
                seed=settings.seed + len(seen),
            )
        out[name] = seen[key]
    return out


def plan_scenario(
    path: str | Path,
    *,
    simulate: bool = True,
    progress: Callable[[str], None] | None = None,
    calibration: str | Path | Any | None = None,
) -> PlanResult:
    """Load the scenario at PATH, estimate every option and plan it.

    CALIBRATION (a file from ``edgeshift targets host --save``, or a
    ``targets.host.PinnedCalibration``) pins the host calibration, so the same scenario
    gives the same plan; by default the cached one is used. Either is recorded in the result.
    """
    from edgeshift.plan.inputs import Estimator, build_problem
    from edgeshift.targets.catalog import HOST_ID, get_target
    from edgeshift.targets.host import current_calibration, host_target, load_calibration_file

    path = Path(path)
    t0 = time.perf_counter()
    pinned = (
        load_calibration_file(calibration) if isinstance(calibration, str | Path) else calibration
    )
    scenario = load_scenario(path)

    def target_for(target_id: str) -> Any:
        if target_id == HOST_ID and pinned is not None:
            return host_target(calibration=pinned)
        return get_target(target_id)

    estimator = Estimator(calibration=pinned)
    problem, estimator = build_problem(
        scenario, path.parent, get_target=target_for, estimator=estimator, progress=progress
    )
    used = pinned if pinned is not None else current_calibration()
    inputs_s = time.perf_counter() - t0
    if progress is not None:
        progress("solving")
    first = plan_problem(problem, simulation=scenario.simulation, simulate=False)
    suggestions = None
    if first.solution.unplaced:
        suggestions = suggest_nodes(problem, first.solution.unplaced, estimator)
        first.explanations = explain(problem, first.options, first.solution, suggestions)
    if simulate:
        if progress is not None:
            progress("simulating")
        t1 = time.perf_counter()
        first.simulations = simulate_solution(problem, first.solution, scenario.simulation)
        first.timings_s["simulate"] = time.perf_counter() - t1
    first.timings_s["inputs"] = inputs_s
    first.estimate_calls = estimator.calls
    first.calibration = used.record() if used is not None else None
    first.assumed = dict(estimator.assumed)
    return first


def suggest_nodes(
    problem: Problem, workloads: list[str], estimator: Any
) -> dict[str, list[NodeSuggestion]]:
    """Catalog targets that, added at a stuck workload's own site, would meet its SLO."""
    from edgeshift.targets.catalog import load_catalog

    catalog = load_catalog()
    out: dict[str, list[NodeSuggestion]] = {}
    by_name = {w.name: w for w in problem.workloads}
    for name in workloads:
        workload = by_name[name]
        site = problem.sites[workload.site]
        found: list[NodeSuggestion] = []
        for target in catalog.values():
            if site.kind != "cloud" and target.is_rented:
                continue  # a rented instance is not something to add at a factory
            for variant in workload.variants:
                perf = estimator.get(variant.model_key, target, variant.precision)
                if perf is None or not perf.fits:
                    continue
                servers = max(1, perf.streams)
                replicas = min_servers(
                    workload.peak_rps,
                    perf.service_ms,
                    workload.quantile,
                    workload.slo_ms - site.lan_rtt_ms,
                    problem.headroom,
                    servers,
                    1000,
                )
                if replicas is None:
                    continue
                if target.usd_per_hour is not None:
                    monthly = target.usd_per_hour * problem.hours_per_month
                elif target.purchase_usd is not None and target.lifetime_years:
                    monthly = target.purchase_usd / (target.lifetime_years * 12.0)
                else:
                    continue
                found.append(
                    NodeSuggestion(target.id, site.lan_rtt_ms + perf.service_ms, monthly * replicas)
                )
        out[name] = found
    return out


def plan_summary(result: PlanResult) -> dict[str, Any]:
    """The JSON document ``plan.json`` holds (and ``--json`` prints)."""
    problem, solution = result.problem, result.solution
    workloads = []
    by_name = {w.name: w for w in problem.workloads}
    for name, option in solution.chosen.items():
        w = by_name[name]
        keys = {v.name: v.model_key for v in w.variants}
        entry: dict[str, Any] = {
            "workload": name,
            "site_of_data": w.site,
            "slo": {"quantile": w.quantile, "ms": w.slo_ms},
            "mean_rps": w.mean_rps,
            "peak_rps": w.peak_rps,
            "data_policy": w.data_policy,
            "placed": option is not None,
            "explanation": result.explanations[name].line,
        }
        if option is not None:
            sim = result.simulations.get(name)
            entry.update(
                pool=option.pool,
                site=option.site,
                site_kind=option.site_kind,
                tier=option.tier,
                target=option.target_id,
                variant=option.variant,
                precision=option.precision,
                assumes=result.assumed.get(
                    (keys.get(option.variant, ""), option.target_id, option.precision)
                ),
                replicas=option.replicas,
                servers_per_replica=option.servers_per_replica,
                network_ms=option.network_ms,
                service_ms=option.service_ms,
                predicted_ms=_finite(option.latency_ms),
                simulated_ms=None if sim is None else sim.quantile_ms(w.quantile),
                utilization_peak=option.utilization_peak,
                usd_per_month=option_cost_usd(problem, option, solution),
                energy_usd=option.energy_usd,
                instance_usd=option.instance_usd,
                egress_usd=option.egress_usd,
            )
        else:
            entry.update(
                binding=result.explanations[name].binding, fixes=result.explanations[name].fixes
            )
        workloads.append(entry)
    pools = [
        {
            "pool": p.id,
            "site": p.site,
            "target": p.target_id,
            "tier": p.tier,
            "existing": p.existing,
            "max_add": p.max_add,
            "used": solution.used_nodes.get(p.id, 0),
            "added": solution.added_nodes.get(p.id, 0),
        }
        for p in problem.pools
    ]
    return {
        "scenario": problem.name,
        "feasible": result.feasible,
        "status": solution.status,
        "total_usd_per_month": solution.total_usd,
        "cost_usd_per_month": _costs(solution),
        "workloads": workloads,
        "pools": pools,
        "baselines": {
            kind: {
                "total_usd_per_month": b.total_usd,
                "cost_usd_per_month": _costs(b),
                "savings_usd_per_month": savings_usd(result, kind),
                "compared_workloads": len(compared_workloads(result, kind)),
                "slo_violations": b.slo_violations,
                "policy_violations": b.policy_violations,
                "unplaced": b.unplaced,
            }
            for kind, b in result.baselines.items()
        },
        "solver": {
            "variables": solution.variables,
            "constraints": solution.constraints,
            "solve_s": solution.solve_s,
            "options": sum(len(v) for v in result.options.values()),
        },
        "timings_s": result.timings_s,
        "estimate_calls": result.estimate_calls,
        "calibration": result.calibration,
        "notes": problem.notes,
        "model": {
            "queueing": "M/M/c (Erlang C) wait at peak rate + constant service time",
            "headroom": problem.headroom,
            "hours_per_month": problem.hours_per_month,
        },
    }


def compared_workloads(result: PlanResult, kind: str) -> list[str]:
    """Workloads both the plan and baseline KIND place: savings are compared on these."""
    base = result.baselines[kind]
    return [
        w
        for w, o in result.solution.chosen.items()
        if o is not None and base.chosen.get(w) is not None
    ]


def savings_usd(result: PlanResult, kind: str) -> float:
    """What the plan saves per month against baseline KIND, on the workloads both place.

    A baseline that cannot run a workload (say, a camera stream too wide for the uplink)
    would otherwise look cheaper for leaving it out.
    """
    base = result.baselines[kind]
    names = compared_workloads(result, kind)
    plan_usd = sum(
        option_cost_usd(result.problem, o, result.solution)
        for w in names
        if (o := result.solution.chosen[w]) is not None
    )
    base_usd = sum(
        option_cost_usd(result.problem, o, base) for w in names if (o := base.chosen[w]) is not None
    )
    return base_usd - plan_usd


def _costs(solution: Solution) -> dict[str, float]:
    return {
        "purchase": solution.purchase_usd,
        "energy": solution.energy_usd,
        "instances": solution.instance_usd,
        "egress": solution.egress_usd,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

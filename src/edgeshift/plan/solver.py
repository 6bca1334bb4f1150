"""Choose one option per workload at least total monthly cost: a MILP solved by HiGHS.

Variables
    x[o]  in {0,1}   option o is chosen (its replica count is fixed by its sizing)
    u[w]  in {0,1}   workload w is left unplaced (only when nothing else is feasible)
    n[p]  integer    nodes added to owned pool p, 0 ≤ n[p] ≤ max_add[p]
Objective
    Σ cost[o]·x[o] + Σ purchase_per_month[p]·n[p]          (energy, instances, egress in cost)
Constraints
    Σ_o∈w x[o] + u[w] = 1                                  one placement per workload
    Σ_o∈p replicas[o]·x[o] − n[p] ≤ existing[p]             owned pool: sunk nodes first
    Σ_o∈p replicas[o]·x[o] ≤ existing[p] + max_add[p]       cloud pool: instance limit
    Σ_o∈s power[o]·x[o] ≤ power_budget[s]                   site power budget
    Σ_o∈l bits_s[o]·x[o] ≤ headroom · bandwidth[l]          link bandwidth at peak

Leaving a workload unplaced, and (for baselines) breaking an SLO or a data policy, are
penalties minimized first; cost is minimized second under the best penalty (two solves, so
a huge penalty weight never blurs the cost optimum).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from edgeshift.errors import PlanError
from edgeshift.plan.options import Option
from edgeshift.plan.problem import Problem


@dataclass
class Solution:
    """The chosen option per workload (None: unplaced) and what it costs per month."""

    chosen: dict[str, Option | None]
    added_nodes: dict[str, int]  # pool id -> nodes to buy
    used_nodes: dict[str, int]  # pool id -> nodes running a workload
    purchase_usd: float  # amortized, per month
    energy_usd: float
    instance_usd: float
    egress_usd: float
    solve_s: float
    variables: int
    constraints: int
    status: str  # "optimal", "feasible" (time limit hit with a solution) or "infeasible"
    slo_violations: list[str] = field(default_factory=list)
    policy_violations: list[str] = field(default_factory=list)

    @property
    def total_usd(self) -> float:
        return self.purchase_usd + self.energy_usd + self.instance_usd + self.egress_usd

    @property
    def unplaced(self) -> list[str]:
        return [w for w, o in self.chosen.items() if o is None]


def solve(
    problem: Problem,
    options: dict[str, list[Option]],
    *,
    candidate: Callable[[Option], bool] | None = None,
    time_limit_s: float = 60.0,
    mip_rel_gap: float = 1e-6,
    keep_violating: int = 3,
) -> Solution:
    """The cheapest placement using, per workload, the options ``candidate`` accepts.

    By default only admissible options (fit, SLO met, policy kept, enough nodes) are candidates.
    A baseline passes a looser ``candidate``; SLO and policy breaks then cost a penalty, and
    only the ``keep_violating`` cheapest and fastest breaking options of a workload are kept
    (hundreds of far-away SLO-breaking options would only slow the solver down).
    """
    accept = candidate or (lambda o: o.admissible)
    started = time.perf_counter()
    cols: list[Option] = []
    col_workload: list[int] = []
    for w_index, workload in enumerate(problem.workloads):
        accepted = [o for o in options.get(workload.name, []) if o.usable and accept(o)]
        for option in _prune_violating(accepted, keep_violating):
            cols.append(option)
            col_workload.append(w_index)
    n_x = len(cols)
    n_w = len(problem.workloads)
    owned_add = [p for p in problem.pools if not p.is_cloud and p.max_add > 0]
    n_vars = n_x + n_w + len(owned_add)
    add_col = {p.id: n_x + n_w + i for i, p in enumerate(owned_add)}

    rows: list[int] = []
    idx: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(lower)
        for col, value in entries:
            rows.append(r)
            idx.append(col)
            vals.append(value)
        lower.append(lo)
        upper.append(hi)

    per_workload: list[list[tuple[int, float]]] = [[] for _ in range(n_w)]
    per_pool: dict[str, list[tuple[int, float]]] = {}
    per_site: dict[str, list[tuple[int, float]]] = {}
    per_link: dict[frozenset[str], list[tuple[int, float]]] = {}
    for col, (option, w_index) in enumerate(zip(cols, col_workload, strict=True)):
        per_workload[w_index].append((col, 1.0))
        per_pool.setdefault(option.pool, []).append((col, float(option.replicas)))
        per_site.setdefault(option.site, []).append((col, option.power_w))
        for link_key in option.links:
            per_link.setdefault(link_key, []).append((col, option.link_bps))
    for w_index in range(n_w):
        add_row([*per_workload[w_index], (n_x + w_index, 1.0)], 1.0, 1.0)
    for pool in problem.pools:
        entries = per_pool.get(pool.id)
        if not entries:
            continue
        if pool.id in add_col:
            add_row([*entries, (add_col[pool.id], -1.0)], -np.inf, float(pool.existing))
        else:
            add_row(entries, -np.inf, float(pool.capacity))
    for site in problem.sites.values():
        if site.power_budget_w is not None and site.name in per_site:
            add_row(per_site[site.name], -np.inf, site.power_budget_w)
    for key, link in problem.links.items():
        if key in per_link:
            add_row(per_link[key], -np.inf, problem.headroom * link.bandwidth_bps)

    cost = np.zeros(n_vars)
    penalty = np.zeros(n_vars)
    violation_weight = 1.0
    unplaced_weight = 2.0 * n_w + 1.0  # one unplaced workload outweighs every violation
    for col, option in enumerate(cols):
        cost[col] = option.running_usd
        penalty[col] = violation_weight * ((not option.meets_slo) + (not option.policy_ok))
    penalty[n_x : n_x + n_w] = unplaced_weight
    for pool in owned_add:
        cost[add_col[pool.id]] = pool.added_usd_per_month
    lb = np.zeros(n_vars)
    ub = np.ones(n_vars)
    for pool in owned_add:
        ub[add_col[pool.id]] = pool.max_add
    integrality = np.ones(n_vars)
    a_matrix = coo_array((vals, (rows, idx)), shape=(len(lower), n_vars)).tocsr()
    base = LinearConstraint(a_matrix, np.array(lower), np.array(upper))
    opts = {"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap, "presolve": True}

    def run(objective: np.ndarray, extra: list[LinearConstraint], bounds: Bounds) -> Any:
        return milp(
            objective,
            integrality=integrality,
            bounds=bounds,
            constraints=[base, *extra],
            options=opts,
        )

    result = None
    if not penalty[:n_x].any():
        # Usual case: try with every workload placed first; one solve when it is feasible.
        ub_placed = ub.copy()
        ub_placed[n_x : n_x + n_w] = 0.0
        result = run(cost, [], Bounds(lb, ub_placed))
        if result.status not in (0, 1) or result.x is None:
            result = None
    if result is None:
        first = run(penalty, [], Bounds(lb, ub))
        if first.x is None:
            raise PlanError(f"the solver failed ({first.message}) — report this scenario as a bug")
        best_penalty = float(np.round(first.fun))
        cap = LinearConstraint(penalty.reshape(1, -1), -np.inf, best_penalty + 0.5)
        result = run(cost, [cap], Bounds(lb, ub))
        if result.x is None:
            result = first
    x = np.round(result.x).astype(int)
    chosen: dict[str, Option | None] = {w.name: None for w in problem.workloads}
    used: dict[str, int] = {}
    for col, option in enumerate(cols):
        if x[col]:
            chosen[option.workload] = option
            used[option.pool] = used.get(option.pool, 0) + option.replicas
    added = {p.id: int(x[add_col[p.id]]) for p in owned_add if x[add_col[p.id]] > 0}
    # A purchase the solver left idle (it cannot matter to the optimum but may appear at a gap).
    for pool_id in list(added):
        pool = problem.pool(pool_id)
        needed = max(0, used.get(pool_id, 0) - pool.existing)
        added[pool_id] = min(added[pool_id], needed)
        if added[pool_id] == 0:
            del added[pool_id]
    picked = [o for o in chosen.values() if o is not None]
    return Solution(
        chosen=chosen,
        added_nodes=added,
        used_nodes=used,
        purchase_usd=sum(problem.pool(p).added_usd_per_month * n for p, n in added.items()),
        energy_usd=sum(o.energy_usd for o in picked),
        instance_usd=sum(o.instance_usd for o in picked),
        egress_usd=sum(o.egress_usd for o in picked),
        solve_s=time.perf_counter() - started,
        variables=n_vars,
        constraints=len(lower),
        status="optimal" if result.status == 0 else ("feasible" if picked else "infeasible"),
        slo_violations=[o.workload for o in picked if not o.meets_slo],
        policy_violations=[o.workload for o in picked if not o.policy_ok],
    )


def _prune_violating(accepted: list[Option], keep: int) -> list[Option]:
    clean = [o for o in accepted if o.meets_slo and o.policy_ok]
    breaking = [o for o in accepted if not (o.meets_slo and o.policy_ok)]
    if len(breaking) <= keep:
        return accepted
    cheapest = sorted(breaking, key=lambda o: o.running_usd)[:keep]
    fastest = sorted(breaking, key=lambda o: o.latency_ms)[:keep]
    allowed = sorted(breaking, key=lambda o: (not o.policy_ok, o.latency_ms))[:keep]
    kept = {id(o): o for o in (*cheapest, *fastest, *allowed)}
    return clean + list(kept.values())


def baseline_candidate(kind: str) -> Callable[[Option], bool]:
    """Options a baseline may use: "cloud-gpu", "cloud-cpu" or "edge" (every non-cloud site)."""
    if kind == "cloud-gpu":
        return lambda o: o.site_kind == "cloud" and o.tier == "gpu"
    if kind == "cloud-cpu":
        return lambda o: o.site_kind == "cloud" and o.tier != "gpu"
    if kind == "edge":
        return lambda o: o.site_kind != "cloud"
    raise ValueError(f"unknown baseline {kind!r}")

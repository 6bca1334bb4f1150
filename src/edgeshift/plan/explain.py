"""One line per workload saying why it goes where it goes, or what stops it and what would fix it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgeshift.plan.options import Option
from edgeshift.plan.problem import Problem, WorkloadSpec
from edgeshift.plan.queueing import response_quantile_ms
from edgeshift.plan.solver import Solution


@dataclass
class Explanation:
    workload: str
    line: str  # the one-line reason, with the numbers
    placed: bool
    binding: list[str] = field(default_factory=list)  # constraints that stop it (unplaced)
    fixes: list[str] = field(default_factory=list)  # what would make it placeable


@dataclass(frozen=True)
class NodeSuggestion:
    """A catalog target that would meet a workload's SLO if added at its site."""

    target_id: str
    latency_ms: float  # network + service at the producing site
    usd_per_month: float


def option_cost_usd(problem: Problem, option: Option, solution: Solution | None = None) -> float:
    """Monthly cost of one option: running cost plus its share of owned-node purchases.

    Within a solution the pool's purchases are shared by replicas; on its own an option pays
    for the nodes it needs beyond those the pool already has.
    """
    pool = problem.pool(option.pool)
    if solution is not None:
        used = solution.used_nodes.get(option.pool, 0)
        bought = solution.added_nodes.get(option.pool, 0) * pool.added_usd_per_month
        share = bought * option.replicas / used if used else 0.0
        return option.running_usd + share
    extra = max(0, option.replicas - pool.existing)
    return option.running_usd + extra * pool.added_usd_per_month


def explain(
    problem: Problem,
    options: dict[str, list[Option]],
    solution: Solution,
    suggestions: dict[str, list[NodeSuggestion]] | None = None,
) -> dict[str, Explanation]:
    """An explanation per workload of PROBLEM for SOLUTION."""
    out: dict[str, Explanation] = {}
    for workload in problem.workloads:
        chosen = solution.chosen.get(workload.name)
        opts = options.get(workload.name, [])
        if chosen is not None:
            out[workload.name] = _explain_placed(problem, workload, chosen, opts, solution)
        else:
            found = (suggestions or {}).get(workload.name, [])
            out[workload.name] = _explain_unplaced(problem, workload, opts, solution, found)
    return out


def _fmt_ms(ms: float) -> str:
    if not math.isfinite(ms):
        return "∞"
    if ms < 1:
        return f"{ms:.2f} ms"
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _policy_scope(problem: Problem, workload: WorkloadSpec) -> str:
    if workload.data_policy == "site":
        return f"the site {workload.site}"
    return f"the region {problem.sites[workload.site].region}"


def _explain_placed(
    problem: Problem,
    workload: WorkloadSpec,
    chosen: Option,
    opts: list[Option],
    solution: Solution,
) -> Explanation:
    label = workload.slo_label
    cost = option_cost_usd(problem, chosen, solution)
    head = (
        f"{workload.name} → {chosen.pool} ×{chosen.replicas} ({chosen.variant}): {label} "
        f"{_fmt_ms(chosen.latency_ms)} ≤ {workload.slo_ms:g} ms SLO, ${cost:,.2f}/mo"
    )
    parts = [head]
    # Compare with the other side of the shift: the cloud for an edge placement, the cloud GPU
    # for a cloud CPU one, the cloud CPU for a GPU one; other pools when there is none.
    elsewhere = [o for o in opts if o.pool != chosen.pool and o.fits]
    contrast = [o for o in elsewhere if _contrasts(chosen, o)]
    if any(o.admissible for o in contrast) or not any(o.admissible for o in elsewhere):
        elsewhere = contrast or elsewhere
    admissible = [o for o in elsewhere if o.admissible]
    if admissible:
        alt = min(admissible, key=lambda o: option_cost_usd(problem, o))
        alt_cost = option_cost_usd(problem, alt)
        taken = " (its nodes are taken by other workloads)" if alt_cost < cost - 0.005 else ""
        parts.append(f"vs {_fmt_ms(alt.latency_ms)}, ${alt_cost:,.2f}/mo on {alt.pool}{taken}")
    elif elsewhere:
        alt = min(elsewhere, key=lambda o: (o.latency_ms, option_cost_usd(problem, o)))
        kind = alt.reason.split(":", 1)[0]
        why = _SHORT_REASON.get(kind, kind)
        parts.append(f"vs {_fmt_ms(alt.latency_ms)} on {alt.pool} ({why})")
    barred = [o for o in opts if not o.policy_ok]
    if barred:
        parts.append(barred[0].reason.removeprefix("policy: "))
    same_site_cheaper = [
        o
        for o in opts
        if o.site == chosen.site
        and o.pool != chosen.pool
        and o.fits
        and o.policy_ok
        and not o.meets_slo
    ]
    if same_site_cheaper and not admissible:
        slow = min(same_site_cheaper, key=lambda o: o.floor_latency_ms)
        parts.append(f"{slow.pool} is too slow ({_fmt_ms(slow.floor_latency_ms)} floor)")
    return Explanation(workload.name, "; ".join(parts), placed=True)


_SHORT_REASON = {
    "policy": "not allowed",
    "slo": "misses the SLO",
    "capacity": "too few nodes",
    "bandwidth": "link too narrow",
    "memory": "does not fit",
}


def _best_latency_ms(problem: Problem, workload: WorkloadSpec, option: Option) -> float:
    """The lowest latency OPTION reaches with every node its pool may have (capped at 10^4)."""
    if option.site_kind == "device" or option.replicas == 0:
        return option.latency_ms
    replicas = min(problem.pool(option.pool).capacity, 10_000)
    if replicas < option.replicas and not option.meets_slo:
        return math.inf  # even the capacity-only sizing does not fit in the pool
    servers = max(replicas, option.replicas) * option.servers_per_replica
    return option.network_ms + response_quantile_ms(
        workload.peak_rps, option.service_ms, servers, workload.quantile
    )


def _contrasts(chosen: Option, other: Option) -> bool:
    if chosen.site_kind != "cloud":
        return other.site_kind == "cloud"
    return other.site_kind == "cloud" and (other.tier == "gpu") != (chosen.tier == "gpu")


def _explain_unplaced(
    problem: Problem,
    workload: WorkloadSpec,
    opts: list[Option],
    solution: Solution,
    suggestions: list[NodeSuggestion],
) -> Explanation:
    name = workload.name
    label = workload.slo_label
    binding: list[str] = []
    fixes: list[str] = []
    best_suggestion = min(suggestions, key=lambda s: s.usd_per_month) if suggestions else None
    add_node_fix = (
        f"add a node of type {best_suggestion.target_id} at {workload.site} "
        f"({label} ≈ {_fmt_ms(best_suggestion.latency_ms)})"
        if best_suggestion
        else None
    )
    fitting = [o for o in opts if o.fits]
    allowed = [o for o in fitting if o.policy_ok]
    meeting = [o for o in allowed if o.meets_slo]
    if not opts:
        binding.append(f"no node is reachable from {workload.site} (no nodes there, no links)")
        fixes.append(f"add nodes at {workload.site} or link it to a site with nodes")
    elif not fitting:
        need = (
            min(o.ram_required_bytes for o in opts if o.ram_required_bytes > 0)
            if any(o.ram_required_bytes > 0 for o in opts)
            else 0
        )
        need_text = f" (needs {need / 2**20:.1f} MiB)" if need else ""
        binding.append(f"memory: the model fits no node reachable from {workload.site}{need_text}")
        fixes.append(add_node_fix or "add a node with more memory, or a smaller variant")
    elif not allowed:
        binding.append(
            f"data policy: every node that can run it is outside {_policy_scope(problem, workload)}"
        )
        fixes.append(f"allow the data to leave {_policy_scope(problem, workload)}")
        fixes.append(add_node_fix or f"add nodes at {workload.site}")
    elif not meeting:
        best = min(allowed, key=lambda o: o.floor_latency_ms)
        binding.append(
            f"SLO: the best {label} reachable is {_fmt_ms(best.floor_latency_ms)} on {best.pool} "
            f"(network {best.network_ms:.1f} + service {best.service_ms:.1f} ms) > "
            f"{workload.slo_ms:g} ms"
        )
        relax_to = min(_best_latency_ms(problem, workload, o) for o in allowed)
        if math.isfinite(relax_to):
            fixes.append(f"relax the SLO to {math.ceil(relax_to)} ms")
        outside = [o for o in fitting if not o.policy_ok and o.meets_slo and o.within_capacity]
        if outside:
            alt = min(outside, key=lambda o: o.latency_ms)
            fixes.append(
                f"allow the data to leave {_policy_scope(problem, workload)} "
                f"({alt.pool}: {label} {_fmt_ms(alt.latency_ms)})"
            )
        if add_node_fix:
            fixes.append(add_node_fix)
    elif not any(o.within_capacity for o in meeting):
        o = min(meeting, key=lambda o: o.replicas)
        pool = problem.pool(o.pool)
        binding.append(f"node count: needs {o.replicas} nodes of {o.pool}, it has {pool.capacity}")
        fixes.append(f"raise max_add of {o.pool} to {o.replicas - pool.existing}")
    else:
        binding, fixes = _coupled(problem, [o for o in meeting if o.within_capacity], solution)
    line = f"{name}: not placed — {'; '.join(binding)}; fix: {' or '.join(fixes)}"
    return Explanation(name, line, placed=False, binding=binding, fixes=fixes)


def _coupled(
    problem: Problem, candidates: list[Option], solution: Solution
) -> tuple[list[str], list[str]]:
    """Which shared limit (pool nodes, site power, link bandwidth) left no room for it."""
    placed = [o for o in solution.chosen.values() if o is not None]
    power_used: dict[str, float] = {}
    link_used: dict[frozenset[str], float] = {}
    for o in placed:
        power_used[o.site] = power_used.get(o.site, 0.0) + o.power_w
        for key in o.links:
            link_used[key] = link_used.get(key, 0.0) + o.link_bps
    binding: list[str] = []
    fixes: list[str] = []
    for o in sorted(candidates, key=lambda o: option_cost_usd(problem, o)):
        pool = problem.pool(o.pool)
        used = solution.used_nodes.get(o.pool, 0)
        if used + o.replicas > pool.capacity:
            binding.append(
                f"node count: {o.pool} has {pool.capacity} nodes, {used} already used, "
                f"{o.replicas} needed"
            )
            fixes.append(f"raise max_add of {o.pool} to {used + o.replicas - pool.existing}")
        site = problem.sites[o.site]
        if site.power_budget_w is not None:
            need = power_used.get(o.site, 0.0) + o.power_w
            if need > site.power_budget_w:
                binding.append(
                    f"power: {o.site} budget {site.power_budget_w:g} W, plan uses "
                    f"{power_used.get(o.site, 0.0):.1f} W, {o.pool} needs {o.power_w:.1f} W more"
                )
                fixes.append(f"raise power_budget_w of {o.site} to {math.ceil(need)} W")
        for key in o.links:
            link = problem.links[key]
            cap = problem.headroom * link.bandwidth_bps
            if link_used.get(key, 0.0) + o.link_bps > cap:
                need_mbps = (link_used.get(key, 0.0) + o.link_bps) / problem.headroom / 1e6
                binding.append(f"bandwidth: link {link.a}–{link.b} is full at peak")
                fixes.append(
                    f"raise bandwidth_mbps of link {link.a}–{link.b} to {math.ceil(need_mbps)}"
                )
        if binding:
            break
    if not binding:
        binding.append("shared limits: the other workloads' placements leave no room")
        fixes.append("add nodes or relax the SLOs of the workloads sharing its nodes")
    return binding, fixes

"""edgeshift plan at scale, and what the example plan saves against each baseline.

    python benchmarks/plan.py                 # sizes up to 10,000 nodes / 500 workloads
    python benchmarks/plan.py --quick         # the small sizes only

Part 1 generates scenarios (seeded) of growing size — factories with every node listed one by
one, two cloud regions with CPU and GPU instances — and times the whole plan from the YAML
file: load + group nodes into pools + estimates + options + MILP + 3 baselines + simulation.
Medians of --repeat runs. It also solves one mid-size problem with grouping undone (one pool
per node) to show what grouping buys, as a ratio measured side by side.

Part 2 plans examples/factory-hospital.yaml and prints its cost against each baseline.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edgeshift.plan.explain import option_cost_usd
from edgeshift.plan.options import build_options
from edgeshift.plan.pipeline import compared_workloads, plan_scenario, savings_usd
from edgeshift.plan.problem import Pool, Problem
from edgeshift.plan.solver import solve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "factory-hospital.yaml"
# Per factory: 100 nodes listed one by one (the loader groups identical ones into pools).
FACTORY_NODES = (("rpi4", "gateway", 60), ("intel-n100", "mini-pc", 30), ("imx8mp", "box", 10))
SIZES = ((10, 2), (50, 10), (100, 20), (250, 50), (500, 100))  # (workloads, factories)


def scenario_yaml(workloads: int, factories: int, seed: int = 0) -> str:
    """A generated scenario: FACTORIES x 100 listed nodes, WORKLOADS spread over them."""
    rng = random.Random(seed)
    lines = ["version: 1", f"name: generated {workloads} workloads", "sites:"]
    for f in range(factories):
        region = "eu" if f % 2 == 0 else "us"
        lines += [
            f"  - name: factory-{f}",
            "    kind: edge",
            f"    region: {region}",
            f"    usd_per_kwh: {rng.uniform(0.1, 0.3):.3f}",
            f"    power_budget_w: {rng.choice([200, 400, 800])}",
            "    nodes:",
        ]
        for target, name, count in FACTORY_NODES:
            for _ in range(count):
                lines.append(f"      - {{target: {target}, name: {name}, count: 1}}")
    for region, cpu, gpu in (("eu", "aws-c7g-2xlarge", "aws-g5-a10g"), ("us", "aws-c7a-2xlarge", "aws-g4dn-t4")):  # fmt: skip
        lines += [
            f"  - name: {region}-cloud",
            "    kind: cloud",
            f"    region: {region}",
            "    nodes:",
            f"      - {{name: cpu, target: {cpu}}}",
            f"      - {{name: gpu, target: {gpu}}}",
        ]
    lines.append("links:")
    for f in range(factories):
        region = "eu" if f % 2 == 0 else "us"
        lines.append(
            f"  - {{between: [factory-{f}, {region}-cloud], rtt_ms: {rng.uniform(8, 40):.1f}, "
            f"bandwidth_mbps: {rng.choice([50, 100, 1000])}, usd_per_gb: 0.02}}"
        )
    lines.append("  - {between: [eu-cloud, us-cloud], rtt_ms: 80, bandwidth_mbps: 10000}")
    lines.append("workloads:")
    for w in range(workloads):
        mean = rng.choice([5, 20, 100, 500])
        lines.append(
            f"  - {{name: w{w}, model: {rng.choice(['digits-mlp', 'digits-cnn'])}, "
            f"site: factory-{w % factories}, mean_rps: {mean}, peak_rps: {mean * 3}, "
            f"payload_bytes: {rng.choice([2000, 20000, 200000])}, "
            f"slo: {{p99_ms: {rng.choice([5, 20, 50, 200])}}}, "
            f"data_policy: {rng.choice(['anywhere', 'region', 'site'])}}}"
        )
    lines += ["simulation: {requests: 20000, seed: 0}"]
    return "\n".join(lines) + "\n"


def ungrouped(problem: Problem) -> Problem:
    """The same problem with one pool per existing node (what grouping avoids)."""
    pools: list[Pool] = []
    for pool in problem.pools:
        if pool.existing <= 1:
            pools.append(pool)
            continue
        for i in range(pool.existing):
            pools.append(replace(pool, id=f"{pool.id}#{i}", name=f"{pool.name}#{i}", existing=1,
                                 max_add=pool.max_add if i == 0 else 0))  # fmt: skip
    return replace(problem, pools=pools)


def time_solve(problem: Problem) -> tuple[float, int]:
    options = build_options(problem)
    t0 = time.perf_counter()
    sol = solve(problem, options)
    return time.perf_counter() - t0, sol.variables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only sizes up to 50 workloads")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    args = parser.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES

    print("== plan time vs scenario size (median of", args.repeat, "runs, whole pipeline) ==")
    header = (
        f"{'workloads':>9} {'nodes':>6} {'pools':>5} {'options':>7} {'vars':>6} {'rows':>5} "
        f"{'total s':>8} {'inputs s':>8} {'solve s':>8} {'baselines s':>11} {'sim s':>6} "
        f"{'placed':>6}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        mid_problem = None
        for workloads, factories in sizes:
            path = Path(tmp) / f"gen-{workloads}.yaml"
            path.write_text(scenario_yaml(workloads, factories))
            totals, runs = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = plan_scenario(path)
                totals.append(time.perf_counter() - t0)
                runs.append(result)
            result = runs[-1]
            t = {k: statistics.median(r.timings_s.get(k, 0.0) for r in runs) for k in
                 ("inputs", "solve", "baselines", "simulate")}  # fmt: skip
            nodes = sum(p.existing for p in result.problem.pools)
            placed = workloads - len(result.solution.unplaced)
            print(
                f"{workloads:>9} {nodes:>6} {len(result.problem.pools):>5} "
                f"{sum(len(v) for v in result.options.values()):>7} "
                f"{result.solution.variables:>6} {result.solution.constraints:>5} "
                f"{statistics.median(totals):>8.2f} {t['inputs']:>8.2f} {t['solve']:>8.3f} "
                f"{t['baselines']:>11.3f} {t['simulate']:>6.2f} {placed:>6}"
            )
            if workloads == 100:
                mid_problem = result.problem
        if mid_problem is not None:
            grouped_s, grouped_vars = time_solve(mid_problem)
            flat = ungrouped(mid_problem)
            flat_s, flat_vars = time_solve(flat)
            print(
                f"\ngrouping at 100 workloads / 2,000 nodes: {len(mid_problem.pools)} pools, "
                f"{grouped_vars} variables, solve {grouped_s:.3f} s; one pool per node: "
                f"{len(flat.pools)} pools, {flat_vars} variables, solve {flat_s:.3f} s "
                f"-> grouped is {flat_s / grouped_s:.1f}x faster"
            )

    print("\n== examples/factory-hospital.yaml: the plan against each baseline ==")
    result = plan_scenario(EXAMPLE)
    plan_usd = result.solution.total_usd
    print("(saved and x plan compare the workloads both the plan and the baseline can run)")
    print(f"{'placement':<22} {'$/month':>10} {'x plan':>7} {'saved':>10}  violations")
    print(f"{'edgeshift plan':<22} {plan_usd:>10,.2f} {1.0:>7.1f} {0.0:>10,.2f}  —")
    for kind, base in result.baselines.items():
        saved = savings_usd(result, kind)
        compared_plan = sum(
            option_cost_usd(result.problem, o, result.solution)
            for w in compared_workloads(result, kind)
            if (o := result.solution.chosen[w]) is not None
        )
        flags = []
        if base.slo_violations:
            flags.append(f"{len(base.slo_violations)} SLO")
        if base.policy_violations:
            flags.append(
                f"{len(base.policy_violations)} policy ({', '.join(base.policy_violations)})"
            )
        if base.unplaced:
            flags.append(f"{len(base.unplaced)} unplaceable ({', '.join(base.unplaced)})")
        print(
            f"{'all ' + kind:<22} {base.total_usd:>10,.2f} "
            f"{(saved + compared_plan) / compared_plan:>7.1f} "
            f"{saved:>10,.2f}  {'; '.join(flags) or '—'}"
        )
    worst = max(
        abs(sim.quantile_ms(w.quantile) / result.solution.chosen[w.name].latency_ms)  # type: ignore[union-attr]
        for w in result.problem.workloads
        if (sim := result.simulations.get(w.name)) is not None
    )
    print(f"simulated / predicted p-SLO latency, worst workload: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

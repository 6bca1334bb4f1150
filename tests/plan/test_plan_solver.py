"""The MILP on hand-built problems whose optimum is worked out by hand (see conftest)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeshift.plan.explain import explain
from edgeshift.plan.options import build_options
from edgeshift.plan.problem import (
    LinkSpec,
    Perf,
    Pool,
    Problem,
    SiteSpec,
    Variant,
    WorkloadSpec,
)
from edgeshift.plan.solver import baseline_candidate, solve

# One workload on the gateway: 10 req/s at peak, 5 mean, 10 ms service, 1 server.
#   p99 = 0.5 (LAN) + 10 + 1000 * ln(0.1 / 0.01) / (100 - 10) = 36.08 ms    (C(1, 0.1) = 0.1)
#   energy = (2 W + 4 W * 0.05) / 1000 * 730 h * $0.2 = $0.3212 per month
# On a cloud instance: $73 per month. The second workload needs the gateway bought for $10.
GW_ENERGY = (2.0 + 4.0 * 0.05) / 1000 * 730 * 0.2
GW_P99 = 0.5 + 10 + 1000 * math.log(10) / 90
FP32_VARIANT = (Variant("fp32", "m", "fp32", 0.0),)


def _plan(problem: Problem):  # type: ignore[no-untyped-def]
    options = build_options(problem)
    return options, solve(problem, options)


def test_hand_optimum_buys_the_second_gateway(make_hand_problem: Callable[..., Problem]) -> None:
    problem = make_hand_problem()
    options, sol = _plan(problem)
    gw = next(o for o in options["a"] if o.pool == "f/gw")
    assert gw.replicas == 1
    assert gw.latency_ms == pytest.approx(GW_P99, rel=1e-9)
    assert gw.energy_usd == pytest.approx(GW_ENERGY, rel=1e-9)
    assert sol.status == "optimal"
    assert {o.pool for o in sol.chosen.values() if o} == {"f/gw"}
    assert sol.added_nodes == {"f/gw": 1}
    assert sol.total_usd == pytest.approx(10.0 + 2 * GW_ENERGY, rel=1e-9)


def test_without_room_to_buy_the_second_goes_to_the_cloud(
    make_hand_problem: Callable[..., Problem],
) -> None:
    _, sol = _plan(make_hand_problem(gw_max_add=0))
    pools = sorted(o.pool for o in sol.chosen.values() if o)
    assert pools == ["c/cpu", "f/gw"]
    assert sol.added_nodes == {}
    assert sol.total_usd == pytest.approx(73.0 + GW_ENERGY, rel=1e-9)


def test_power_budget_binds(make_hand_problem: Callable[..., Problem]) -> None:
    # Each gateway draws 2 + 4 * 0.1 = 2.4 W at peak: a 3 W budget fits only one.
    _, sol = _plan(make_hand_problem(power_budget_w=3.0))
    assert sorted(o.pool for o in sol.chosen.values() if o) == ["c/cpu", "f/gw"]
    assert sol.total_usd == pytest.approx(73.0 + GW_ENERGY, rel=1e-9)


def test_egress_is_charged_on_the_mean_rate(make_hand_problem: Callable[..., Problem]) -> None:
    problem = make_hand_problem(gw_max_add=0, usd_per_gb=0.5)
    _, sol = _plan(problem)
    cloud = next(o for o in sol.chosen.values() if o and o.pool == "c/cpu")
    gb = 1000 * 5.0 * 3600 * 730 / 1e9  # payload * mean rate * seconds per month
    assert cloud.egress_usd == pytest.approx(gb * 0.5, rel=1e-9)
    assert sol.total_usd == pytest.approx(73.0 + GW_ENERGY + gb * 0.5, rel=1e-9)


def test_link_bandwidth_binds(make_hand_problem: Callable[..., Problem]) -> None:
    # Each workload sends 10 req/s * 8000 bit = 80 kbit/s; 80 % of 150 kbit/s fits one. The
    # gateway cannot hold the model, so both want the cloud and one is left out.
    problem = make_hand_problem(bandwidth_bps=150e3)
    problem.perf[("m", "gw1", "fp32")] = Perf(10.0, 100.0, 2 << 30, True)
    options, sol = _plan(problem)
    assert len(sol.unplaced) == 1
    ex = explain(problem, options, sol)[sol.unplaced[0]]
    assert not ex.placed
    assert ex.binding == ["bandwidth: link f–c is full at peak"]
    # 160 kbit/s at 80 % utilization needs 0.2 Mbit/s: rounded up to 1.
    assert ex.fixes == ["raise bandwidth_mbps of link f–c to 1"]


def test_slo_no_option_can_meet_is_explained(make_hand_problem: Callable[..., Problem]) -> None:
    problem = make_hand_problem(slo_ms=5.0)
    options, sol = _plan(problem)
    assert sorted(sol.unplaced) == ["a", "b"]
    ex = explain(problem, options, sol)["a"]
    assert ex.binding[0].startswith("SLO: the best p99 reachable is 10.5 ms on f/gw")
    # With both gateways (capacity 2) the wait quantile is 0: 0.5 + 10 ms, so 11 ms works.
    assert "relax the SLO to 11 ms" in ex.fixes
    assert "not placed" in ex.line


def test_data_policy_infeasibility_is_explained(
    make_hand_problem: Callable[..., Problem],
) -> None:
    problem = make_hand_problem(policies=("site", "anywhere"))
    # The gateway cannot run the model (too little memory): only the cloud could.
    problem.perf[("m", "gw1", "fp32")] = Perf(10.0, 100.0, 2 << 30, True)
    options, sol = _plan(problem)
    assert sol.unplaced == ["a"]
    assert sol.chosen["b"] is not None and sol.chosen["b"].pool == "c/cpu"
    ex = explain(problem, options, sol)["a"]
    assert ex.binding[0].startswith("data policy")
    assert "allow the data to leave the site f" in ex.fixes


def test_node_count_shared_between_workloads_is_explained(
    make_hand_problem: Callable[..., Problem],
) -> None:
    # Both must stay on site, only one gateway exists and none may be bought.
    problem = make_hand_problem(gw_max_add=0, policies=("site", "site"))
    options, sol = _plan(problem)
    assert len(sol.unplaced) == 1
    ex = explain(problem, options, sol)[sol.unplaced[0]]
    assert ex.binding[0].startswith("node count: f/gw has 1 nodes, 1 already used")
    assert "raise max_add of f/gw to 1" in ex.fixes


def test_baselines_count_violations(make_hand_problem: Callable[..., Problem]) -> None:
    problem = make_hand_problem(policies=("site", "anywhere"))
    options = build_options(problem)
    cloud = solve(problem, options, candidate=baseline_candidate("cloud-cpu"))
    assert cloud.policy_violations == ["a"]
    assert cloud.total_usd == pytest.approx(2 * 73.0)
    edge = solve(problem, options, candidate=baseline_candidate("edge"))
    assert edge.policy_violations == [] and edge.total_usd == pytest.approx(10 + 2 * GW_ENERGY)
    gpu = solve(problem, options, candidate=baseline_candidate("cloud-gpu"))
    assert gpu.unplaced == ["a", "b"]  # there is no GPU pool


@st.composite
def _random_problem(draw: st.DrawFn) -> Problem:
    n_sites = draw(st.integers(2, 4))
    sites = {}
    pools = []
    perf = {}
    for i in range(n_sites):
        name = f"s{i}"
        kind = draw(st.sampled_from(["edge", "on-prem", "cloud"]))
        region = draw(st.sampled_from(["eu", "us"]))
        sites[name] = SiteSpec(name, kind, region, 0.2, None, 0.5)  # type: ignore[arg-type]
        if draw(st.booleans()):
            cloud = kind == "cloud"
            target = f"t{i}"
            existing, max_add = draw(st.integers(0, 2)), draw(st.integers(0, 3))
            added_usd = 0.0 if cloud else draw(st.floats(1, 50))
            instance_usd = draw(st.floats(10, 100)) if cloud else 0.0
            pools.append(
                Pool(
                    f"{name}/n",
                    name,
                    "n",
                    target,
                    "server",
                    existing,
                    max_add,
                    added_usd,
                    instance_usd,
                    5.0,
                    20.0,
                    1 << 30,
                )
            )
            perf[("m", target, "fp32")] = Perf(draw(st.floats(1, 30)), 1000.0, 1 << 20, True)
    names = list(sites)
    links = {}
    for a in names:
        for b in names:
            if a < b and draw(st.booleans()):
                links[frozenset((a, b))] = LinkSpec(a, b, draw(st.floats(1, 40)), 1e9, 0.01)
    workloads = []
    for j in range(draw(st.integers(1, 5))):
        site = draw(st.sampled_from(names))
        peak = draw(st.floats(2, 40))
        slo = draw(st.floats(20, 200))
        policy = draw(st.sampled_from(["anywhere", "region", "site"]))
        workloads.append(
            WorkloadSpec(f"w{j}", site, 2.0, peak, 1000, 0.99, slo, policy, FP32_VARIANT)
        )
    return Problem(sites, pools, links, workloads, perf)


@settings(max_examples=40, deadline=None)
@given(_random_problem())
def test_data_policy_is_never_violated(problem: Problem) -> None:
    _, sol = _plan(problem)
    for w in problem.workloads:
        chosen = sol.chosen[w.name]
        if chosen is None:
            continue
        if w.data_policy == "site":
            assert chosen.site == w.site  # privacy-bound: never off-site
        elif w.data_policy == "region":
            assert problem.sites[chosen.site].region == problem.sites[w.site].region
        assert chosen.meets_slo and chosen.latency_ms <= w.slo_ms
    used: dict[str, int] = {}
    for o in sol.chosen.values():
        if o is not None:
            used[o.pool] = used.get(o.pool, 0) + o.replicas
    for pool in problem.pools:
        assert used.get(pool.id, 0) <= pool.capacity
        assert used.get(pool.id, 0) <= pool.existing + sol.added_nodes.get(pool.id, 0) or (
            pool.is_cloud
        )


def test_add_node_suggestion_names_the_cheapest_fitting_target(
    make_hand_problem: Callable[..., Problem],
) -> None:
    from edgeshift.plan.pipeline import suggest_nodes

    class FakeEstimator:
        """Only intel-n100 and jetson-orin-nano-cpu are fast enough (1 ms) for a 5 ms SLO."""

        def get(self, model_key: str, target: object, precision: str) -> Perf | None:
            fast = target.id in {"intel-n100", "jetson-orin-nano-cpu"}  # type: ignore[attr-defined]
            return Perf(1.0 if fast else 50.0, 4000.0, 1 << 20, True, streams=4)

    problem = make_hand_problem(slo_ms=5.0)
    found = suggest_nodes(problem, ["a"], FakeEstimator())["a"]
    assert {s.target_id for s in found} == {"intel-n100", "jetson-orin-nano-cpu"}
    options = build_options(problem)
    sol = solve(problem, options)
    ex = explain(problem, options, sol, {"a": found})["a"]
    # Both catalog prices are amortized over their lifetimes; the N100 ($169) is cheaper.
    assert "add a node of type intel-n100 at f (p99 ≈ 1.5 ms)" in ex.fixes


def test_savings_compare_only_what_both_place(make_hand_problem: Callable[..., Problem]) -> None:
    from edgeshift.plan.pipeline import compared_workloads, plan_problem, savings_usd

    result = plan_problem(make_hand_problem(policies=("site", "anywhere")), simulate=False)
    plan_usd = 10.0 + 2 * GW_ENERGY
    assert result.solution.total_usd == pytest.approx(plan_usd)
    # All on cloud CPU: two instances at $73, both workloads compared.
    assert savings_usd(result, "cloud-cpu") == pytest.approx(2 * 73.0 - plan_usd)
    # No GPU pool: the GPU baseline runs nothing, so nothing is compared (not "$10 dearer").
    assert compared_workloads(result, "cloud-gpu") == []
    assert savings_usd(result, "cloud-gpu") == 0.0


def test_power_budget_infeasibility_is_explained(
    make_hand_problem: Callable[..., Problem],
) -> None:
    # Both must stay on site; a second gateway may be bought but 2 x 2.4 W > 3 W.
    problem = make_hand_problem(power_budget_w=3.0, policies=("site", "site"))
    options, sol = _plan(problem)
    assert len(sol.unplaced) == 1
    ex = explain(problem, options, sol)[sol.unplaced[0]]
    assert ex.binding == ["power: f budget 3 W, plan uses 2.4 W, f/gw needs 2.4 W more"]
    assert ex.fixes == ["raise power_budget_w of f to 5 W"]

"""Hand-built placement problems: the solver's pure core is tested on plain data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgeshift.plan.problem import (
    LinkSpec,
    Perf,
    Pool,
    Problem,
    SiteSpec,
    Variant,
    WorkloadSpec,
)

FP32 = (Variant("fp32", "m", "fp32", 0.0),)


def hand_problem(
    *,
    gw_max_add: int = 1,
    power_budget_w: float | None = None,
    slo_ms: float = 100.0,
    bandwidth_bps: float = 100e6,
    policies: tuple[str, str] = ("anywhere", "anywhere"),
    usd_per_gb: float = 0.0,
) -> Problem:
    """Factory f (one gateway, one more may be bought at $10/mo) linked to cloud c ($73/mo
    per CPU instance); two identical workloads a and b produced at f. See the test module for
    the numbers worked out by hand."""
    sites = {
        "f": SiteSpec("f", "edge", "eu", 0.2, power_budget_w, 0.5),
        "c": SiteSpec("c", "cloud", "eu", 0.1, None, 0.2),
    }
    pools = [
        Pool("f/gw", "f", "gw", "gw1", "edge", 1, gw_max_add, 10.0, 0.0, 2.0, 6.0, 1 << 30),
        Pool("c/cpu", "c", "cpu", "cpu1", "server", 0, 100, 0.0, 73.0, 20.0, 60.0, 8 << 30),
    ]
    links = {frozenset(("f", "c")): LinkSpec("f", "c", 20.0, bandwidth_bps, usd_per_gb)}
    workloads = [
        WorkloadSpec(name, "f", 5.0, 10.0, 1000, 0.99, slo_ms, policy, FP32)  # type: ignore[arg-type]
        for name, policy in zip(("a", "b"), policies, strict=True)
    ]
    perf = {
        ("m", "gw1", "fp32"): Perf(10.0, 100.0, 1 << 20, True),
        ("m", "cpu1", "fp32"): Perf(2.0, 2000.0, 1 << 20, True, streams=4),
    }
    return Problem(sites, pools, links, workloads, perf, headroom=0.8, hours_per_month=730.0)


@pytest.fixture
def make_hand_problem() -> Callable[..., Problem]:
    return hand_problem


@pytest.fixture
def tiny_scenario_text() -> Callable[..., str]:
    def make(*replacements: tuple[str, str]) -> str:
        text = """\
name: tiny
sites:
  - name: plant
    kind: edge
    region: eu
    nodes:
      - name: gateway
        target: rpi5
        count: 1
  - name: cloud
    kind: cloud
    region: eu
    nodes:
      - name: cpu
        target: aws-c7g-2xlarge
links:
  - between: [plant, cloud]
    rtt_ms: 20
    bandwidth_mbps: 100
workloads:
  - name: audio
    model: digits-mlp
    site: plant
    mean_rps: 5
    peak_rps: 10
    payload_bytes: 1000
    slo: {p99_ms: 50}
    data_policy: site
"""
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new)
        return text

    return make

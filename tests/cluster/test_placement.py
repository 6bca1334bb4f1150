"""Placement from a plan, without Ray: pools -> custom resources and replica counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeshift.cluster.placement import (
    PoolPlacement,
    check_resources,
    placements_from_plan,
    pool_resource,
    read_plan,
)
from edgeshift.errors import ConfigError


def _w(name: str, pool: str, replicas: int = 1, tier: str = "server", placed: bool = True) -> dict:
    return {"workload": name, "pool": pool, "replicas": replicas, "tier": tier, "placed": placed}


PLAN = {
    "workloads": [
        _w("defect-camera", "factory-cameras/camera-mcu", 8, tier="mcu"),
        _w("machine-audio", "factory/gateway", 1, tier="edge"),
        _w("xray-triage", "hospital/mini-pc", 2, tier="edge"),
        _w("patient-notes", "hospital/mini-pc", 1, tier="edge"),
        _w("product-search", "eu-cloud/cpu", 3),
        _w("unplaced", "", 0, placed=False),
    ]
}


def test_workloads_named_like_models_put_those_models_on_their_pools() -> None:
    got = placements_from_plan(PLAN, ["xray-triage", "patient-notes", "product-search"])
    assert got == [
        PoolPlacement("eu-cloud/cpu", 3, ("product-search",), ("product-search",)),
        PoolPlacement(
            "hospital/mini-pc",
            3,
            ("xray-triage", "patient-notes"),
            ("xray-triage", "patient-notes"),
        ),
    ]
    assert got[0].resource == "edgeshift-pool:eu-cloud/cpu"


def test_without_matching_names_every_pool_serves_every_model() -> None:
    got = placements_from_plan(PLAN, ["mlp"])
    # The microcontroller pool has no Ray: skipped; replicas summed per pool.
    assert [(p.pool, p.replicas, p.models) for p in got] == [
        ("eu-cloud/cpu", 3, ()),
        ("factory/gateway", 1, ()),
        ("hospital/mini-pc", 3, ()),
    ]


def test_a_plan_with_only_microcontrollers_is_refused() -> None:
    with pytest.raises(ConfigError, match="no workload on a pool that can run Ray"):
        placements_from_plan({"workloads": [PLAN["workloads"][0]]}, ["mlp"])


def test_check_resources_names_the_missing_pool_and_the_fix() -> None:
    placements = [PoolPlacement("hospital/mini-pc", 2), PoolPlacement("eu-cloud/cpu", 3)]
    resources = {pool_resource("hospital/mini-pc"): 2.0, pool_resource("eu-cloud/cpu"): 3.0}
    check_resources(placements, resources)
    with pytest.raises(ConfigError, match=r"eu-cloud/cpu has no Ray node.*--resources"):
        check_resources(placements, {pool_resource("hospital/mini-pc"): 2.0})
    with pytest.raises(ConfigError, match="needs 3 replicas but its Ray nodes offer 1"):
        check_resources(placements, {**resources, pool_resource("eu-cloud/cpu"): 1.0})


def test_read_plan_refuses_what_is_not_a_plan(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"pools": []}))
    with pytest.raises(ConfigError, match="not a plan.json"):
        read_plan(tmp_path / "p.json")
    with pytest.raises(ConfigError, match="cannot read plan"):
        read_plan(tmp_path / "missing.json")
    (tmp_path / "ok.json").write_text(json.dumps(PLAN))
    assert read_plan(tmp_path / "ok.json") == PLAN


def test_the_plans_queueing_inputs_come_with_each_pool() -> None:
    plan = {
        "workloads": [
            {
                **_w("a", "hospital/mini-pc", 1),
                "service_ms": 2.0,
                "slo": {"ms": 50, "quantile": 0.95},
            },
            {
                **_w("b", "hospital/mini-pc", 1),
                "service_ms": 5.0,
                "slo": {"ms": 30, "quantile": 0.99},
            },
        ]
    }
    (pool,) = placements_from_plan(plan, ["a", "b"])
    # The slowest service time and the tightest SLO: the pool must meet both workloads'.
    assert (pool.service_ms, pool.slo_ms, pool.slo_quantile) == (5.0, 30.0, 0.99)
    (bare,) = placements_from_plan({"workloads": [_w("a", "eu-cloud/cpu")]}, ["a"])
    assert (bare.service_ms, bare.slo_ms) == (None, None)

"""plan.json placements on edge pools -> rollout specs for the matching device groups."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from edgeshift.errors import FleetError
from edgeshift.fleet.apply import group_for_pool, plan_to_rollouts
from edgeshift.fleet.schema import ArtifactInfo, ArtifactRef, ExponentialWaves


def _placement(workload: str, pool: str, site_kind: str, tier: str, **kw: Any) -> dict[str, Any]:
    site = pool.split("/")[0]
    entry = dict(workload=workload, placed=True, pool=pool, site=site, site_kind=site_kind,
                 tier=tier, variant="fp32", precision="fp32", replicas=1)  # fmt: skip
    entry.update(kw)
    return entry


# The shape `edgeshift plan examples/factory-hospital.yaml` writes (fields the mapping reads).
PLAN: dict[str, Any] = {
    "scenario": "factory + hospital + cloud",
    "feasible": True,
    "workloads": [
        _placement("defect-camera", "factory-cameras/camera-mcu", "device", "mcu"),
        _placement("machine-audio", "factory/gateway", "edge", "edge"),
        _placement(
            "xray-triage",
            "hospital/mini-pc",
            "on-prem",
            "edge",
            variant="int8 (artifacts/xray-int8)",
            precision="int8",
        ),
        _placement("product-search", "eu-cloud/cpu", "cloud", "server"),
        {"workload": "late", "placed": False, "explanation": "SLO", "binding": ["slo"]},
    ],
}


def _artifact(name: str, version: int, precision: str | None = None) -> ArtifactInfo:
    digest = hashlib.sha256(f"{name}{version}".encode()).hexdigest()
    ref = ArtifactRef(artifact_id=f"{name}-v{version}", name=name, version=version,
                      target_path=f"{name}/{version}.tar", length=1, sha256=digest)  # fmt: skip
    manifest: dict[str, object] = {} if precision is None else {"precision": precision}
    return ArtifactInfo(ref=ref, created_at=0.0, files={}, manifest=manifest)


def _published(*infos: ArtifactInfo) -> dict[str, ArtifactInfo]:
    return {i.ref.artifact_id: i for i in infos}


ARTIFACTS = _published(
    _artifact("machine-audio", 1),
    _artifact("machine-audio", 3),
    _artifact("machine-audio", 2),
    _artifact("xray-int8", 1, "INT8"),
    _artifact("xray-int8", 2, "fp32"),  # wrong precision for the placement
    _artifact("product-search", 1),
)


def test_edge_placements_become_rollouts_for_their_pool_groups() -> None:
    specs = plan_to_rollouts(PLAN, ARTIFACTS, {"waves": [10, 100], "soak_s": 60})
    assert [(s.group, s.artifact_id) for s in specs] == [
        ("factory.gateway", "machine-audio-v3"),  # newest version
        ("hospital.mini-pc", "xray-int8-v1"),  # by the variant's artifact dir, same precision
    ]
    assert all(s.waves == [10, 100] and s.soak_s == 60 for s in specs)
    assert plan_to_rollouts(PLAN, ARTIFACTS)[0].waves == [1, 10, 50, 100]


def test_workload_name_wins_over_the_variant_dir_and_defaults_pass_through() -> None:
    arts = {**ARTIFACTS, **_published(_artifact("xray-triage", 7))}
    plan = copy.deepcopy(PLAN)
    plan["workloads"][2]["precision"] = "fp32"
    specs = plan_to_rollouts(plan, arts, {"waves": {"start_percent": 5, "factor": 4}})
    assert specs[1].artifact_id == "xray-triage-v7"
    assert specs[1].waves == ExponentialWaves(start_percent=5, factor=4)


def test_a_placement_without_a_published_artifact_is_a_clear_error() -> None:
    arts = {k: v for k, v in ARTIFACTS.items() if not k.startswith("xray-int8-v1")}
    with pytest.raises(FleetError) as err:
        plan_to_rollouts(PLAN, arts)
    message = str(err.value)
    assert err.value.status == 404 and "\n" not in message
    assert "'xray-triage' on pool 'hospital/mini-pc'" in message
    assert "no published int8 artifact named 'xray-triage' or 'xray-int8'" in message


def test_two_workloads_on_one_pool_are_refused() -> None:
    plan = copy.deepcopy(PLAN)
    plan["workloads"].append(_placement("patient-notes", "hospital/mini-pc", "on-prem", "edge"))
    with pytest.raises(FleetError, match="hosts 2 workloads \\(xray-triage, patient-notes\\)"):
        plan_to_rollouts(plan, ARTIFACTS)
    # Picking workloads resolves it: each pool then gets one rollout.
    specs = plan_to_rollouts(plan, ARTIFACTS, workloads=["xray-triage", "machine-audio"])
    assert sorted((spec.group, spec.artifact_id) for spec in specs) == [
        ("factory.gateway", "machine-audio-v3"),
        ("hospital.mini-pc", "xray-int8-v1"),
    ]
    with pytest.raises(FleetError, match="--workload nope: not placed on a fleet pool"):
        plan_to_rollouts(plan, ARTIFACTS, workloads=["nope"])


@pytest.mark.parametrize(
    ("plan", "defaults", "message"),
    [
        ({}, {}, "no 'workloads' list"),
        ({"workloads": ["x"]}, {}, "workloads\\[0\\] is not a placement"),
        ({"workloads": [{"workload": "w", "placed": True, "site_kind": "edge"}]}, {}, "no pool"),
        (PLAN, {"group": "x"}, "may not set 'group'"),
        (PLAN, {"waves": [50, 10]}, "rollout defaults: waves: .*must rise"),
        (PLAN, {"soak_s": -1}, "rollout defaults: soak_s:"),
        (PLAN, {"typo_s": 1}, "rollout defaults: typo_s:"),
    ],
)
def test_bad_plans_and_defaults_are_refused(
    plan: dict[str, Any], defaults: dict[str, Any], message: str
) -> None:
    with pytest.raises(FleetError, match=message):
        plan_to_rollouts(plan, ARTIFACTS, defaults)


def test_group_names_stay_in_the_fleet_alphabet() -> None:
    assert group_for_pool("factory/gateway") == "factory.gateway"
    assert group_for_pool("plant 2/jetson nano") == "plant-2.jetson-nano"
    with pytest.raises(FleetError, match="not a valid fleet name"):
        group_for_pool("s/" + "x" * 80)
    with pytest.raises(FleetError, match="not a valid fleet name"):
        group_for_pool("../etc")

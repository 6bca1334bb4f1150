"""A plan records the calibration its estimates rest on, and a pinned one makes it repeatable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.targets.host import detect_host, save_calibration_file
from edgeshift.targets.schema import Calibration

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"


def _calibration(**overrides: Any) -> Calibration:
    host = detect_host()
    data: dict[str, Any] = {
        "key": host.cache_key, "created": "2025-01-01T00:00:00+00:00",
        "cpu_model": "pinned test CPU", "threads": 2, "runtime_versions": host.runtime_versions,
        "achieved_gops": {"fp32": 100.0, "int8": 300.0}, "conv_gflops": 60.0,
        "half_rows": {"gemm_fp32": 8.0, "conv_fp32": 64.0}, "dram_copy_gbs": 15.0,
        "elementwise_gbs": 12.0, "cache_gbs": 60.0, "call_overhead_us": {"fp32": 8.0},
        "op_overhead_us": {"fp32": 0.5}, "runtime_overhead_bytes": 100 << 20,
        "efficiency": {"gemm": 0.5, "conv": 0.3, "memory": 0.6}, "seconds": 1.0,
    }  # fmt: skip
    data.update(overrides)
    return Calibration.model_validate(data)


def _plan(out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["plan", str(EXAMPLE), "--out", str(out), "--no-simulate", *extra]
    )
    assert result.exit_code in (0, 1), result.output
    doc = json.loads((out / "plan.json").read_text())
    doc.pop("timings_s")
    doc["solver"].pop("solve_s")
    return doc


def test_pinned_calibration_gives_the_same_plan(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached
    pin = save_calibration_file(_calibration(), detect_host(), tmp_path / "cal.json")
    first = _plan(tmp_path / "a", "--calibration", str(pin))
    second = _plan(tmp_path / "b", "--calibration", str(pin))
    assert first == second
    cal = first["calibration"]
    assert cal["host"] == "pinned test CPU" and cal["created"] == "2025-01-01T00:00:00+00:00"
    assert cal["source"] == str(pin) and cal["figures"]["dram_copy_gbs"] == 15.0
    placed = [w for w in first["workloads"] if w["placed"]]
    assert placed and all(w["assumes"]["runtime"] and w["assumes"]["precision"] for w in placed)
    # A calibration twice as slow on GEMM moves the figures the plan rests on.
    slow = save_calibration_file(
        _calibration(efficiency={"gemm": 0.05, "conv": 0.03, "memory": 0.06}),
        detect_host(),
        tmp_path / "slow.json",
    )
    other = _plan(tmp_path / "c", "--calibration", str(slow))
    service = {w["workload"]: w.get("service_ms") for w in first["workloads"]}
    assert any(
        w.get("service_ms") not in (None, service[w["workload"]]) for w in other["workloads"]
    )


def test_unpinned_plan_without_cache_says_so(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        app, ["plan", str(EXAMPLE), "--out", str(tmp_path / "o"), "--no-simulate"]
    )
    assert "default efficiencies" in result.stdout
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["calibration"] is None

"""The CLI verbs: targets (list / show / host), estimate, compare — output and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.targets import _calibrate

runner = CliRunner()


def _ok(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_targets_list_table_and_tier_filter() -> None:
    out = _ok(["targets"]).stdout
    for tid in ("stm32f4", "rpi5", "aws-m7i-2xlarge", "aws-p5-h100"):
        assert tid in out
    rows = json.loads(_ok(["targets", "--tier", "mcu", "--json"]).stdout)
    assert {r["tier"] for r in rows} == {"mcu"} and len(rows) >= 4
    assert rows[0]["ram"]["source"] or rows[0]["ram"]["derived"]


def test_targets_show_has_sources() -> None:
    data = json.loads(_ok(["targets", "show", "rpi5", "--json"]).stdout)
    assert data["peak_gops"]["fp32"]["value"] == pytest.approx(153.6)
    assert "derived" in data["peak_gops"]["fp32"]
    out = _ok(["targets", "show", "rpi5"]).stdout
    assert "source:" in out and "derived:" in out and "153.6" in out


def test_targets_host_from_cache(calibrated_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _calibrate, "run_calibration_checked", lambda *a, **k: pytest.fail("measured")
    )
    data = json.loads(_ok(["targets", "host", "--json"]).stdout)
    assert data["id"] == "host" and data["calibration"]["achieved_gops"]["fp32"] == 100.0
    assert "calibration" in _ok(["targets", "show", "host"]).stdout


def test_targets_host_recalibrate_quick_asks_for_a_quick_calibration(
    calibrated_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quick reaches the calibration (one round at smaller sizes: slow or emulated hosts);
    without it a recalibration is the full one."""
    asked: list[bool] = []
    real = _calibrate.run_calibration_checked

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(bool(kwargs.get("quick")))
        return real(*args, **{**kwargs, "quick": True})  # quick either way: seconds, not a minute

    monkeypatch.setattr(_calibrate, "run_calibration_checked", spy)
    data = json.loads(_ok(["targets", "host", "--recalibrate", "--quick", "--json"]).stdout)
    assert data["id"] == "host" and data["calibration"]["achieved_gops"]["fp32"] > 0
    _ok(["targets", "host", "--recalibrate", "--json"])
    assert asked == [True, False]


def test_estimate_json(mlp_path: Path, cache_dir: Path) -> None:
    data = json.loads(
        _ok(["estimate", str(mlp_path), "--target", "rpi5", "--batch", "4", "--json"]).stdout
    )
    assert data["target_id"] == "rpi5" and data["batch"] == 4 and data["fits"] is True
    assert data["latency_ms"] > 0 and data["usd_per_million"] > 0 and data["energy_j"] > 0
    assert {r["op_class"] for r in data["breakdown"]} >= {"gemm"}
    assert "confidence" not in data and data["interval_coverage"] in (0.0, 0.8)
    if data["interval_ms"] is not None:  # the shipped error model, widened for rpi5
        lo, hi = data["interval_ms"]
        assert lo < data["latency_ms"] < hi and "wider" in data["interval_basis"]


def test_estimate_table_on_host(mlp_path: Path, calibrated_host: Any) -> None:
    out = _ok(["estimate", str(mlp_path), "--target", "host", "-p", "fp32"]).stdout
    assert "latency" in out and "per op class" in out and "interval: " in out
    assert "confidence" not in out


def test_compare_table_and_json(mlp_path: Path, cache_dir: Path) -> None:
    args = ["compare", str(mlp_path), "--targets", "aws-g4dn-t4,rpi5,stm32f4", "--slo-ms", "1"]
    out = _ok(args).stdout
    assert "cheapest" in out and "USD per million" in out
    data = json.loads(_ok([*args, "--json"]).stdout)
    assert next(r["target_id"] for r in data["rows"]) in data["answer"]
    assert set(data["meets_slo"]) == {"aws-g4dn-t4", "rpi5", "stm32f4"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["targets", "show", "rpix"], "did you mean rpi"),
        (["targets", "--tier", "cloud"], "unknown tier"),
        (["estimate", "MLP", "--target", "jetson-nano"], "jetson-orin-nano-cpu"),
        (["estimate", "missing.onnx", "--target", "rpi5"], "model not found"),
        (["estimate", "MLP", "--target", "rpi5", "--precision", "fp4"], "unknown precision"),
        (["estimate", "MLP", "--target", "rpi5", "--utilization", "0"], "utilization"),
        (["estimate", "EMB", "--target", "rpi5"], "--shape"),
        (["estimate", "EMB", "--target", "rpi5", "--shape", "sequ=4"], "did you mean 'seq'"),
        (["compare", "MLP", "--targets", "rpi5,h100x"], "unknown target"),
        (["compare", "MLP", "--targets", ","], "no targets"),
    ],
)
def test_bad_input_is_one_line_error(
    args: list[str], message: str, mlp_path: Path, embedding_path: Path, cache_dir: Path
) -> None:
    args = [str(mlp_path) if a == "MLP" else str(embedding_path) if a == "EMB" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_catalog_file_is_a_config_error(tmp_path: Path) -> None:
    from edgeshift.errors import ConfigError
    from edgeshift.targets.catalog import load_catalog

    (tmp_path / "x.yaml").write_text("id: x\n")
    with pytest.raises(ConfigError, match="x.yaml: required field 'name' is missing"):
        load_catalog(tmp_path)

"""Host detection, the calibration cache (round trip, key, location) and a real calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeshift.runtime import usable_cpus
from edgeshift.targets import _calibrate
from edgeshift.targets.catalog import get_target
from edgeshift.targets.host import (
    cache_dir,
    cache_path,
    calibrate_host,
    detect_host,
    host_target,
    load_calibration,
    save_calibration,
)


def test_detection_reads_this_machine() -> None:
    host = detect_host()
    assert host.usable_cores == usable_cpus()
    assert host.clock_ghz > 0 and host.memory_bytes > 1 << 28
    assert host.cpu_model and host.runtime_versions.get("onnxruntime")
    per_cycle = host.flops_per_cycle()
    assert per_cycle["fp32"][0] >= 8 and per_cycle["int8"][0] >= per_cycle["fp32"][0]
    assert str(host.usable_cores) in host.cache_key and "onnxruntime=" in host.cache_key


def test_cache_location_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGESHIFT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edgeshift"
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "es"))
    assert cache_dir() == tmp_path / "es"
    monkeypatch.delenv("EDGESHIFT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "edgeshift"


def _no_measuring(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("calibration ran although a valid cache exists")


def test_cached_calibration_is_reused(
    calibrated_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_calibrate, "run_calibration_checked", _no_measuring)
    t = get_target("host")
    assert t.calibration == calibrated_host
    assert t.id == "host" and t.tier == "server"
    assert t.cores.value == detect_host().usable_cores
    assert t.runtime_overhead.bytes == calibrated_host.runtime_overhead_bytes
    # The host's peak is derived from its flags and clock, bandwidth from the measured copy.
    assert t.mem_bandwidth_gbs.value == pytest.approx(15.0 / 0.75)
    assert "int8" in t.precisions and "bf16" not in t.precisions  # only what was measured
    with pytest.raises(AssertionError, match="calibration ran"):
        host_target(recalibrate=True)


def test_stale_or_corrupt_cache_is_ignored(calibrated_host: Any) -> None:
    host = detect_host()
    path = cache_path(host)
    data = json.loads(path.read_text())
    data["key"] = "v0|another cpu|64|onnxruntime=0.1"
    path.write_text(json.dumps(data))
    assert load_calibration(host) is None
    path.write_text("{not json")
    assert load_calibration(host) is None


def test_fit_saturation_by_hand() -> None:
    # a(r) = 200 * r / (r + 10): a(8) = 88.9, a(128) = 185.5 -> back to (200, 10).
    a8, a128 = 200 * 8 / 18, 200 * 128 / 138
    top, half = _calibrate.fit_saturation(8, a8, 128, a128)
    assert top == pytest.approx(200) and half == pytest.approx(10)
    assert _calibrate.fit_saturation(8, 100, 128, 90) == (100, 0.0)


def test_corrected_peak_doubles_the_vector_width() -> None:
    assert _calibrate.corrected_peak(166.0, 100.0) == 166.0
    assert _calibrate.corrected_peak(166.0, 226.0) == 332.0  # Zen 5 seen as Zen 4
    assert _calibrate.corrected_peak(100.0, 350.0) == 400.0
    assert _calibrate.corrected_peak(0.0, 90.0) == pytest.approx(100.0)
    # One factor for all precisions: they share the vector units.
    flag = {"fp32": 166.0, "bf16": 332.0, "int8": 664.0}
    assert _calibrate.width_factor(flag, {"fp32": 226.0, "bf16": 250.0}) == 2.0
    assert _calibrate.width_factor(flag, {"fp32": 100.0}) == 1.0


@pytest.mark.slow
def test_real_calibration_round_trip(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cal = calibrate_host(quick=True)
    assert cache_path(detect_host()).is_file()
    assert load_calibration() == cal
    # Measured figures are physical: positive, overheads in a sane range, efficiency <= 1.
    assert cal.achieved_gops["fp32"] > 1 and cal.dram_copy_gbs > 0.5
    assert 0 < cal.call_overhead_us["fp32"] < 10_000
    assert 0 < cal.efficiency["gemm"] <= 0.9 + 1e-9
    assert 0 < cal.efficiency["memory"] <= 0.75 + 1e-9  # never above the STREAM fraction
    assert cal.op_overhead_us["fp32_conv"] >= 0 and "fp32" in cal.call_overhead_us
    # What the figures rest on travels with them (and round-trips through the cache above).
    assert cal.passes == 1 and all(v >= 0 for v in cal.noisy.values())
    monkeypatch.setattr(_calibrate, "run_calibration_checked", _no_measuring)
    t = host_target()
    assert t.calibration == cal
    assert t.peak("fp32") >= cal.achieved_gops["fp32"]


def test_save_is_atomic_and_readable(cache_dir: Path, make_calibration: Any) -> None:
    cal = make_calibration()
    path = save_calibration(cal, detect_host())
    assert path.parent == cache_dir and not list(cache_dir.glob("*.tmp"))
    assert load_calibration() == cal

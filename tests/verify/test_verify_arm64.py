"""The zoo on arm64 under QEMU user mode against x86: every variant, in one emulated process."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RECIPES, SAMPLES, ZOO
from edgeshift.verify import verify_many
from edgeshift.verify.report import VerifyReport
from edgeshift.verify.runners import QemuUserRunner

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("recipe", ["ort-fp32-opt", "openvino-fp32"])
def test_fp32_variants_agree_to_rtol_1e4(
    arm64_reports: dict[tuple[str, str], VerifyReport], name: str, recipe: str
) -> None:
    report = arm64_reports[(name, recipe)]
    arm = report.result("arm64")
    assert arm.status == "pass", arm.message
    (check,) = arm.outputs
    assert check.agreement.shape == (SAMPLES, 10)
    assert check.agreement.max_rel_error <= 1e-4
    assert report.result("x86_64").status == "reference"


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("recipe", ["ort-int8-static", "ort-int8-dynamic"])
def test_int8_variants_keep_top1_agreement(
    arm64_reports: dict[tuple[str, str], VerifyReport], name: str, recipe: str
) -> None:
    report = arm64_reports[(name, recipe)]
    assert report.precision == "int8"
    arm = report.result("arm64")
    assert arm.status == "pass", arm.message
    assert arm.outputs[0].agreement.top1_agreement_pct is not None
    assert arm.outputs[0].agreement.top1_agreement_pct >= 99.5


@pytest.mark.parametrize("name", ZOO)
def test_openvino_bf16_has_no_arm64_build_and_says_so_in_one_line(
    arm64_reports: dict[tuple[str, str], VerifyReport], name: str
) -> None:
    arm = arm64_reports[(name, "openvino-bf16")].result("arm64")
    assert arm.status == "error"
    assert "\n" not in arm.message
    assert arm.message.startswith("arm64: this CPU cannot run OpenVINO at bf16")


def test_every_variant_was_verified(arm64_reports: dict[tuple[str, str], VerifyReport]) -> None:
    assert sorted(arm64_reports) == sorted((n, r) for n in ZOO for r in RECIPES)
    assert all(r.emulated for k, r in arm64_reports.items() if k[1] != "openvino-bf16")


def test_a_runtime_crash_on_arm64_is_one_line_and_the_rest_still_run(
    userland: object, zoo_variants: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    # A Cortex-A72 has no dot product; the userland's cpuinfo promises one, so ORT's int8
    # kernels execute SDOT and the process dies with SIGILL, as on a mis-described board.
    data = str(Path(__file__).parents[2] / "src/edgeshift/zoo/data/digits-mlp.npz")
    crashing = zoo_variants[("digits-mlp", "ort-int8-dynamic")]
    fine = zoo_variants[("digits-mlp", "ort-fp32-opt")]
    reports = verify_many(
        [crashing, fine], ["arm64"], data, samples=32,
        runners={"arm64": QemuUserRunner(cpu="cortex-a72")},
    )  # fmt: skip
    crashed, survived = (r.result("arm64") for r in reports)
    assert crashed.status == "error"
    assert crashed.message.startswith(
        "arm64: the runtime crashed on arm64 (SIGILL) running this model"
    )
    assert "\n" not in crashed.message
    assert survived.status == "pass"  # rerun in a fresh process after the crash

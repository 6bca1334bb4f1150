"""Measured figures of a verified compile replace the extrapolation in estimate (and plan)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from tests.conftest import make_mlp

from edgeshift.mcu import feedback
from edgeshift.mcu.cores import CORES
from edgeshift.targets.estimate import estimate


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(d))
    return d


def _compiled_dir(tmp_path: Path, model_file: Path, core: str, instructions: float) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(model_file.read_bytes())
    from edgeshift.model.load import sha256_file

    manifest = {
        "model_file": "model.onnx",
        "source": {"sha256": sha256_file(model_file)},
        "target": {"core": core},
        "macs": 1000,
        "created": "2026-11-29T00:00:00+00:00",
        "verification": {
            "flash_bytes": 12_345,
            "ram_bytes": 2_048,
            "instructions_per_inference": instructions,
        },
    }
    feedback.record(manifest, out)
    return out


def test_estimate_uses_the_measured_figures_of_a_compiled_model(
    tmp_path: Path, cache: Path
) -> None:
    model, _ = make_mlp(sizes=(8, 16, 4))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    before = estimate(path, "stm32h7")
    assert before.basis == "roofline"

    _compiled_dir(tmp_path, path, "cortex-m7", 480_000.0)
    after = estimate(path, "stm32h7")
    assert after.basis == "compiled"
    # 480k instructions x CPI at 480 MHz.
    cpi = CORES["cortex-m7"].cycles_per_instruction
    assert after.latency_ms == pytest.approx(480_000 * cpi / 480e6 * 1e3)
    assert after.ram_required_bytes == 2_048 and after.flash_required_bytes == 12_345
    assert after.fits and "measured" in after.fit_reason
    assert any("edgeshift compile" in n for n in after.notes)


def test_other_cores_models_and_precisions_keep_the_roofline(tmp_path: Path, cache: Path) -> None:
    model, _ = make_mlp(sizes=(8, 16, 4))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    _compiled_dir(tmp_path, path, "cortex-m7", 480_000.0)
    # stm32f4 is a Cortex-M4: the M7 figures do not apply.
    assert estimate(path, "stm32f4").basis == "roofline"
    # Another model file (other weights) is not the one that was compiled.
    other, _ = make_mlp(seed=1, sizes=(8, 16, 4))
    other_path = tmp_path / "other.onnx"
    onnx.save(other, other_path)
    assert estimate(other_path, "stm32h7").basis == "roofline"
    # A float precision asked for explicitly is not what the compiled int8 C runs.
    assert estimate(path, "stm32h7", precision="fp32").basis == "roofline"


def test_a_corrupt_store_is_ignored(tmp_path: Path, cache: Path) -> None:
    model, _ = make_mlp(sizes=(8, 16, 4))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    store = feedback.store_path()
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    assert estimate(path, "stm32h7").basis == "roofline"
    store.write_text(json.dumps({"version": 1, "entries": {"x": 1}}))
    assert feedback.lookup(path, "cortex-m7") is None


def test_every_buildable_core_has_a_cost_per_instruction() -> None:
    from edgeshift.mcu.toolchain import CORES as BUILD

    assert set(CORES) == set(BUILD)

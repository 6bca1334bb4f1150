"""OpenVINO mixed precision: int8 where it is safe, the sensitive layers in float at the
precision the variant names (fp32, or bf16 where the CPU has it). Checked on what the CPU
plugin really compiled: each node's runtimePrecision in get_runtime_model()."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from optimize_models import hot_pixel_cnn, hot_pixel_data, save_model

from edgeshift.model.repair import repair_for_quantization
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.recipes import BuildContext
from edgeshift.optimize.recipes.openvino_nncf_int8 import NNCFSettings, OpenVINONNCFInt8
from edgeshift.runtime import open_backend
from edgeshift.runtime.openvino import cpu_capabilities

pytestmark = pytest.mark.slow


def _context(tmp_path: Path) -> BuildContext:
    model = save_model(hot_pixel_cnn(), tmp_path / "hot.onnx")
    x = hot_pixel_data(16)["x"]
    return BuildContext(
        source_path=model,
        repaired_path=model,
        repaired=repair_for_quantization(onnx.load(str(model))).model,
        workdir=tmp_path,
        calibration=[{"x": x[i : i + 1]} for i in range(len(x))],
        host=detect_host(),
        seed=0,
        quick=True,
        is_transformer=False,
    )


def _runtime_precisions(ctx: BuildContext, float_ops: str) -> dict[str, str]:
    variant = OpenVINONNCFInt8(NNCFSettings(float_ops=float_ops)).build(ctx, exclude=["conv1"])
    backend = open_backend(variant.model_path, variant.backend, variant.runtime_precision, 1)
    try:
        ops = backend.compiled.get_runtime_model().get_ops()  # type: ignore[attr-defined]
        return {
            op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
            for op in ops
            if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")
        }
    finally:
        backend.close()


def test_sensitive_layer_runs_fp32_and_the_rest_int8(tmp_path: Path) -> None:
    precisions = _runtime_precisions(_context(tmp_path), "fp32")
    assert precisions["conv1"] == "f32"  # kept in float by the ignored scope, at fp32
    assert precisions["conv2"] in ("u8", "i8") and precisions["logits"] in ("u8", "i8")


@pytest.mark.skipif("BF16" not in cpu_capabilities(), reason="the CPU has no bf16")
def test_float_ops_at_bf16_put_the_sensitive_layer_at_bf16(tmp_path: Path) -> None:
    precisions = _runtime_precisions(_context(tmp_path), "bf16")
    assert precisions["conv1"] == "bf16"
    assert precisions["conv2"] in ("u8", "i8")

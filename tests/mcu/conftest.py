"""Shared fixtures of the Cortex-M tests: the vendored MLPerf Tiny models. (Tests that build
or run firmware take ``arm_toolchain`` from tests/conftest.py.)"""

from __future__ import annotations

from pathlib import Path

MLPERF_DIR = Path(__file__).parent / "fixtures" / "mlperf_tiny"
MLPERF_MODELS = {
    "kws": "kws_ref_model.onnx",
    "vww": "vww_96_int8.onnx",
    "ic": "pretrainedResnet_quant.onnx",
    "ad": "ad01_int8.onnx",
}


def mlperf_model(name: str) -> Path:
    return MLPERF_DIR / MLPERF_MODELS[name]

"""Shared fixtures of the Cortex-M tests: the vendored MLPerf Tiny models and the toolchain.

Tests that build or run firmware take ``arm_toolchain``: it skips where arm-none-eabi-gcc or
qemu-system-arm is missing on a developer's machine, and fails under CI (CI=true), where
.ci/run installs them — so CI can never pass by skipping the Cortex-M path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

MLPERF_DIR = Path(__file__).parent / "fixtures" / "mlperf_tiny"
MLPERF_MODELS = {
    "kws": "kws_ref_model.onnx",
    "vww": "vww_96_int8.onnx",
    "ic": "pretrainedResnet_quant.onnx",
    "ad": "ad01_int8.onnx",
}
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm", "gcc")


@pytest.fixture(scope="session")
def arm_toolchain() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        message = (
            f"missing {', '.join(missing)}: apt-get install gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi qemu-system-arm"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def mlperf_model(name: str) -> Path:
    return MLPERF_DIR / MLPERF_MODELS[name]

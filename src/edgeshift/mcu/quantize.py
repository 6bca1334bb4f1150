"""Float model + calibration data -> the int8 QDQ model ``lower`` takes.

ORT's static quantizer, as the ``ort-int8-static`` recipe drives it, with what an MCU needs
instead of what an x86 server needs: int8 activations (the recipe uses uint8 for VNNI),
every op quantized (not only Conv/MatMul/Gemm: the MCU has no float fallback), and full
8-bit weights (``reduce_range`` guards x86 int16 saturation, which int32 MACs never hit).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from edgeshift.errors import DataError
from edgeshift.optimize.recipes import quiet_root_logger
from edgeshift.optimize.recipes.ort_static_int8 import FeedReader


def quantize_for_mcu(model: onnx.ModelProto, calibration: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Quantize MODEL to QDQ int8 (per-channel symmetric weights, int8 activations, MinMax
    ranges) on CALIBRATION, one array per graph input with the samples on axis 0."""
    names = [
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    missing = [n for n in names if n not in calibration]
    if missing:
        raise DataError(f"calibration data lacks input(s) {missing}: add them to the .npz")
    count = min(len(calibration[n]) for n in names)
    if count == 0:
        raise DataError("calibration data is empty: pass a few hundred samples per input")
    # one sample per feed: the batch dim of a float model may be fixed to 1
    feeds = [
        {n: np.asarray(calibration[n][i : i + 1], np.float32) for n in names} for i in range(count)
    ]
    with tempfile.TemporaryDirectory(prefix="edgeshift-mcu-q-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        with quiet_root_logger():
            quantize_static(
                str(src),
                str(dst),
                FeedReader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        return onnx.load(str(dst))

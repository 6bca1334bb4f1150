"""What the tests of each shipped corpus model read the same way: its metadata, its eval
arrays, and its outputs on one runtime."""

from __future__ import annotations

import numpy as np
import onnx

from edgeshift.runtime import open_backend
from edgeshift.zoo import ZooModel


def metadata(model: ZooModel) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(model.model_path)).metadata_props}


def eval_arrays(model: ZooModel) -> tuple[np.ndarray, np.ndarray]:
    """The eval inputs (key ``input``) and their labels."""
    data = np.load(model.data_path)
    return data["input"], data["labels"]


def run_output(model: ZooModel, backend: str, output: str, precision: str = "fp32") -> np.ndarray:
    """OUTPUT of MODEL on all its eval inputs, on BACKEND at PRECISION, one thread."""
    x, _ = eval_arrays(model)
    runner = open_backend(model.model_path, backend=backend, precision=precision, threads=1)
    return runner.run({"input": x})[output]

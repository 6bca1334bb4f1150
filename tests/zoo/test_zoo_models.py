"""The shipped digits models: real weights, real eval data, same answers on both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeshift.runtime import open_backend
from edgeshift.zoo import get

DIGITS = ["digits-mlp", "digits-cnn"]
INPUT_SHAPES = {"digits-mlp": (64,), "digits-cnn": (1, 8, 8)}


@pytest.fixture(scope="module", params=DIGITS)
def digits(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return get(request.param, tmp_path_factory.mktemp(request.param))


def test_graph_contract(digits) -> None:
    proto = onnx.load(str(digits.model_path))
    onnx.checker.check_model(proto)
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in dims[1:]) == INPUT_SHAPES[digits.name]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[1].dim_value == 10


def test_eval_data_is_the_held_out_split(digits) -> None:
    data = np.load(digits.data_path)
    assert sorted(data.files) == ["input", "labels"]
    x, y = data["input"], data["labels"]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (360, *INPUT_SHAPES[digits.name]) and y.shape == (360,)
    # pixels / 16 of 16 grey levels: values in [0, 1] on a 1/16 grid
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    # stratified split: every digit class is present, ~36 samples each
    counts = np.bincount(y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def _accuracy_and_argmax(model_path: Path, x: np.ndarray, y: np.ndarray, backend: str):
    b = open_backend(model_path, backend=backend, precision="fp32", threads=1)
    logits = b.run({"input": x})["logits"]
    pred = logits.argmax(axis=1)
    return float((pred == y).mean()), pred, logits


@pytest.mark.slow
def test_ort_and_openvino_agree_and_accuracy_is_as_reported(digits) -> None:
    data = np.load(digits.data_path)
    x, y = data["input"], data["labels"]
    acc_ort, pred_ort, logits_ort = _accuracy_and_argmax(digits.model_path, x, y, "onnxruntime")
    acc_ov, pred_ov, logits_ov = _accuracy_and_argmax(digits.model_path, x, y, "openvino")
    np.testing.assert_array_equal(pred_ort, pred_ov)
    # both fp32; differences are summation order only (a few ulps of logits ~10)
    np.testing.assert_allclose(logits_ov, logits_ort, rtol=1e-4, atol=1e-4)
    reported = {p.key: p.value for p in onnx.load(str(digits.model_path)).metadata_props}
    assert acc_ort == pytest.approx(float(reported["test_accuracy"]), abs=1e-6)
    assert int(reported["test_samples"]) == len(y)
    assert acc_ort > 0.9 and acc_ov == acc_ort
    # the labels are real: shuffled labels give chance-level accuracy (~0.1)
    shuffled = np.random.default_rng(0).permutation(y)
    assert float((pred_ort == shuffled).mean()) < 0.3

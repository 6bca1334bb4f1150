"""The shipped keyword spotter (CNN on espeak-ng log-mels): its recorded held-out accuracy
reproduced on both runtimes, and `optimize --metric auto` scoring it as a classifier."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from tests.zoo.shipped import eval_arrays, metadata, run_output

from edgeshift.optimize.metrics import resolve_metric
from edgeshift.zoo import ZooModel, get, list_models

NAME = "kws-cnn"
INPUT_SHAPE = (1, 49, 40)  # [1, frames, mel bands]
CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "unknown",
           "silence")  # fmt: skip
PER_CLASS = 25
SAMPLES = PER_CLASS * len(CLASSES)


@pytest.fixture(scope="module")
def kws(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return get(NAME, tmp_path_factory.mktemp(NAME))


def _logits(model: ZooModel, backend: str) -> np.ndarray:
    return run_output(model, backend, "logits")


def test_listed_as_a_classifier() -> None:
    entry = next(e for e in list_models() if e.name == NAME)
    assert entry.task == "classification" and entry.available and entry.reason == ""


def test_graph_contract(kws: ZooModel) -> None:
    proto = onnx.load(str(kws.model_path))
    onnx.checker.check_model(proto)
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in in_dims[1:]) == INPUT_SHAPE
    assert out_dims[1].dim_value == len(CLASSES)
    ops = Counter(n.op_type for n in proto.graph.node)
    # six 3x3 convs with BatchNorm folded into them by the export
    assert ops["Conv"] == 6 and "BatchNormalization" not in ops
    meta = metadata(kws)
    assert tuple(meta["classes"].split(",")) == CLASSES
    assert int(meta["test_samples"]) == SAMPLES
    assert meta["dataset"].startswith("espeak-ng")
    assert len(meta["held_out_variants"].split(",")) >= 10


def test_eval_data_is_held_out_clips(kws: ZooModel) -> None:
    data = np.load(kws.data_path)
    assert sorted(data.files) == ["input", "labels"]
    x, y = eval_arrays(kws)
    assert x.dtype == np.float32 and x.shape == (SAMPLES, *INPUT_SHAPE)
    assert y.dtype == np.int64 and y.shape == (SAMPLES,)
    assert np.bincount(y, minlength=len(CLASSES)).tolist() == [PER_CLASS] * len(CLASSES)
    # standardized log-mels, stored on float16's grid
    assert abs(float(x.mean())) < 1.0 and 0.5 < float(x.std()) < 2.0
    np.testing.assert_array_equal(x.astype(np.float16).astype(np.float32), x)
    assert len({row.tobytes() for row in x}) == SAMPLES  # every clip a new one


@pytest.mark.slow
def test_onnxruntime_reproduces_recorded_accuracy(kws: ZooModel) -> None:
    _, y = eval_arrays(kws)
    pred = _logits(kws, "onnxruntime").argmax(axis=1)
    accuracy = float((pred == y).mean())
    # The build measured it with ORT fp32 on this file and these clips; another CPU's kernels
    # round differently (~1e-6 of a logit), which could flip one near-tied clip of 300.
    assert accuracy == pytest.approx(float(metadata(kws)["test_accuracy"]), abs=1 / SAMPLES)
    assert accuracy > 0.85  # voices never heard in training, 12 classes (chance 0.083)
    # the labels are real: labels shifted by one class score far below
    assert float((pred == (y + 1) % len(CLASSES)).mean()) < 0.2


@pytest.mark.slow
def test_openvino_fp32_agrees_with_onnxruntime(kws: ZooModel) -> None:
    _, y = eval_arrays(kws)
    ort_logits, ov_logits = _logits(kws, "onnxruntime"), _logits(kws, "openvino")
    # Both fp32: six convs differ by summation order only, ~1e-5 on logits of magnitude ~10;
    # 1e-3 absolute is 100x that and far below the gap between a clip's top two classes.
    np.testing.assert_allclose(ov_logits, ort_logits, atol=1e-3, rtol=1e-4)
    acc_ort = float((ort_logits.argmax(1) == y).mean())
    acc_ov = float((ov_logits.argmax(1) == y).mean())
    assert acc_ov == pytest.approx(acc_ort, abs=1 / SAMPLES)


def test_auto_metric_is_top1_for_a_classifier(kws: ZooModel) -> None:
    _, y = eval_arrays(kws)
    # the metric is chosen from layouts only, so made-up logits of the right shape will do
    logits = np.eye(len(CLASSES), dtype=np.float32)[y]
    metric = resolve_metric("auto", {"logits": logits}, "logits", y)
    assert metric.name == "top1" and "a classifier" in metric.reason
    assert metric.score({"logits": logits}, {"logits": logits}, y) == 100.0

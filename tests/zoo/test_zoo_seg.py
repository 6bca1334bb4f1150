"""The shipped segmentation net (U-Net on rendered scenes): its recorded pixel accuracy and mIoU
reproduced on both runtimes, and how `optimize` scores its [N, C, H, W] map."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.zoo.shipped import eval_arrays, metadata, run_output
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.optimize.metrics import resolve_metric
from edgeshift.zoo import ZooModel, get, list_models

NAME = "seg-unet"
SIZE = 96
CLASSES = ("background", "text", "shape", "line")
SAMPLES = 64
PIXELS = SAMPLES * SIZE * SIZE


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return get(NAME, tmp_path_factory.mktemp(NAME))


def _logits(model: ZooModel, backend: str) -> np.ndarray:
    return run_output(model, backend, "logits")


def _miou(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes of IoU pooled over all pixels of all scenes (the build's figure)."""
    ious = [
        np.sum((pred == c) & (labels == c)) / np.sum((pred == c) | (labels == c))
        for c in range(len(CLASSES))
    ]
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def ort_logits(seg: ZooModel) -> np.ndarray:
    return _logits(seg, "onnxruntime")


def test_listed_for_segmentation() -> None:
    entry = next(e for e in list_models() if e.name == NAME)
    assert entry.task == "segmentation" and entry.available and entry.reason == ""


def test_graph_contract(seg: ZooModel) -> None:
    proto = onnx.load(str(seg.model_path))
    onnx.checker.check_model(proto)
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in in_dims[1:]) == (3, SIZE, SIZE)
    assert tuple(d.dim_value for d in out_dims[1:]) == (len(CLASSES), SIZE, SIZE)
    ops = Counter(n.op_type for n in proto.graph.node)
    # a U-Net: 3 pooling steps down, 3 transposed convs up, a skip concatenated at each level;
    # 2 convs per level and bottleneck + the 1x1 head; BatchNorm folded into the convs
    assert ops["MaxPool"] == 3 and ops["ConvTranspose"] == 3 and ops["Concat"] == 3
    assert ops["Conv"] == 15 and "BatchNormalization" not in ops
    meta = metadata(seg)
    assert tuple(meta["classes"].split(",")) == CLASSES
    assert int(meta["test_samples"]) == SAMPLES
    assert meta["held_out_fonts"].startswith("LiberationSerif")


def test_eval_data_is_held_out_scenes(seg: ZooModel) -> None:
    data = np.load(seg.data_path)
    assert sorted(data.files) == ["input", "labels"]
    x, y = eval_arrays(seg)
    assert x.dtype == np.float32 and x.shape == (SAMPLES, 3, SIZE, SIZE)
    assert y.dtype == np.uint8 and y.shape == (SAMPLES, SIZE, SIZE)
    # 8-bit RGB / 255: values in [0, 1] on a 1/255 grid
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)
    shares = np.bincount(y.ravel(), minlength=len(CLASSES)) / y.size
    assert shares.size == len(CLASSES) and shares[0] > 0.5 and (shares[1:] > 0.005).all()
    assert (y == 1).reshape(SAMPLES, -1).any(axis=1).all()  # text in every scene


@pytest.mark.slow
def test_onnxruntime_reproduces_recorded_scores(seg: ZooModel, ort_logits: np.ndarray) -> None:
    _, y = eval_arrays(seg)
    assert ort_logits.shape == (SAMPLES, len(CLASSES), SIZE, SIZE)
    pred = ort_logits.argmax(axis=1)
    meta = metadata(seg)
    # Measured by the build with ORT fp32 on this file and these scenes. Another CPU's kernels
    # round differently (~1e-6 of a logit), which can flip near-tied pixels on class borders:
    # allow 50 pixels of 590k (~1e-4 of accuracy; the mIoU moves by about as much).
    assert float((pred == y).mean()) == pytest.approx(float(meta["test_accuracy"]), abs=1e-4)
    assert _miou(pred, y) == pytest.approx(float(meta["test_miou"]), abs=1e-3)
    assert float((pred == y).mean()) > 0.9 and _miou(pred, y) > 0.6
    # the labels are real: another scene's label map scores far below
    assert _miou(pred, np.roll(y, 1, axis=0)) < 0.5


@pytest.mark.slow
def test_openvino_fp32_agrees_with_onnxruntime(seg: ZooModel, ort_logits: np.ndarray) -> None:
    _, y = eval_arrays(seg)
    ov_logits = _logits(seg, "openvino")
    # Both fp32: 18 convs in a row differ by summation order only (~1e-5 of logits that reach
    # ~30); 1e-3 absolute is 100x that. Pixels where the top two classes are that close can
    # flip: the scores may move by a few pixels of 590k.
    np.testing.assert_allclose(ov_logits, ort_logits, atol=1e-3, rtol=1e-4)
    ort_pred, ov_pred = ort_logits.argmax(axis=1), ov_logits.argmax(axis=1)
    assert int((ort_pred != ov_pred).sum()) <= 50
    assert _miou(ov_pred, y) == pytest.approx(_miou(ort_pred, y), abs=1e-3)


def test_metrics_read_the_class_axis_of_the_map(seg: ZooModel) -> None:
    _, y = eval_arrays(seg)
    # metric choice depends on layouts only: one-hot logits of the label map will do
    logits = np.moveaxis(np.eye(len(CLASSES), dtype=np.float32)[y], -1, 1)
    outputs = {"logits": logits}
    auto = resolve_metric("auto", outputs, "logits", y)
    # integer label maps: auto takes the output for segmentation and scores mean IoU
    assert auto.name == "iou" and "segmentation" in auto.reason
    top1 = resolve_metric("top1", outputs, "logits", y)
    assert top1.score(outputs, outputs, y) == 100.0
    # top1 compares every pixel's argmax over axis 1 with the label map: shift one class
    wrong = np.where(y == 1, 2, y).astype(np.uint8)
    assert top1.score(outputs, outputs, wrong) == pytest.approx(100.0 * (1 - (y == 1).mean()))


@pytest.mark.slow
def test_optimize_scores_pixels(seg: ZooModel, tmp_path: Path) -> None:
    base = ["optimize", str(seg.model_path), "--data", str(seg.data_path), "--quick",
            "--recipes", "ort-fp32-opt"]  # fmt: skip
    # auto sees integer label maps and says segmentation; top1 scores every pixel
    for metric, want, why in (("auto", "iou", "segmentation"), ("top1", "top1", "given by")):
        out = tmp_path / metric
        result = CliRunner().invoke(app, [*base, "--metric", metric, "--out", str(out)])
        assert result.exit_code == 0, result.output + result.stderr
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("metric: ")]
        assert line.startswith(f"metric: {want} — ") and why in line
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["metric"]["name"] == want

"""The shipped text-line recognizer (CRNN, CTC): its recorded exact-match and CER reproduced on
both runtimes, and `optimize --metric auto` scoring it as a CTC recognizer."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.zoo.shipped import eval_arrays, metadata, run_output
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.optimize.sequence import ctc_greedy_decode, sequence_scores
from edgeshift.zoo import ZooModel, get, list_models

NAME = "textline-crnn"
INPUT_SHAPE = (1, 32, 200)
STEPS, CLASSES, MAX_CHARS = 50, 75, 20
EVAL_LINES = 256


@pytest.fixture(scope="module")
def textline(tmp_path_factory: pytest.TempPathFactory) -> ZooModel:
    return get(NAME, tmp_path_factory.mktemp(NAME))


def _log_probs(model: ZooModel, backend: str, precision: str = "fp32") -> np.ndarray:
    return run_output(model, backend, "log_probs", precision)


def test_listed_as_a_recognizer() -> None:
    entry = next(e for e in list_models() if e.name == NAME)
    assert entry.task == "recognition" and entry.available and entry.reason == ""


def test_graph_contract(textline: ZooModel) -> None:
    proto = onnx.load(str(textline.model_path))
    onnx.checker.check_model(proto)
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == ("input", "log_probs")
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in in_dims[1:]) == INPUT_SHAPE
    assert tuple(d.dim_value for d in out_dims[1:]) == (STEPS, CLASSES)
    ops = Counter(n.op_type for n in proto.graph.node)
    # a real CRNN: convs, two bidirectional LSTM layers; BatchNorm folded into the convs
    assert ops["Conv"] == 4 and ops["LSTM"] == 2 and "BatchNormalization" not in ops
    for node in (n for n in proto.graph.node if n.op_type == "LSTM"):
        attrs = {a.name: a for a in node.attribute}
        assert attrs["direction"].s == b"bidirectional"
    meta = metadata(textline)
    assert len(meta["alphabet"]) == CLASSES - 1 and meta["blank_index"] == "0"
    assert meta["input_scaling"] == "grey pixels / 255.0"
    assert int(meta["test_samples"]) == EVAL_LINES


def test_eval_data_is_held_out_lines(textline: ZooModel) -> None:
    data = np.load(textline.data_path)
    assert sorted(data.files) == ["input", "labels"]
    x, labels = eval_arrays(textline)
    assert x.dtype == np.float32 and x.shape == (EVAL_LINES, *INPUT_SHAPE)
    # 8-bit grey / 255: values in [0, 1] on a 1/255 grid
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)
    assert labels.dtype == np.int64 and labels.shape == (EVAL_LINES, MAX_CHARS)
    lengths = (labels >= 0).sum(axis=1)
    assert lengths.min() >= 8 and lengths.max() <= MAX_CHARS
    # characters first, then -1 padding only; classes 1..74 (0 is the blank)
    for row, n in zip(labels, lengths, strict=True):
        assert (row[n:] == -1).all() and (row[:n] >= 1).all() and (row[:n] < CLASSES).all()
    assert len({tuple(row) for row in labels}) == EVAL_LINES  # every line a new string


def _decoded_text(log_probs: np.ndarray, alphabet: str) -> list[str]:
    return ["".join(alphabet[c - 1] for c in seq) for seq in ctc_greedy_decode(log_probs, 0)]


@pytest.mark.slow
def test_onnxruntime_reproduces_recorded_accuracy(textline: ZooModel) -> None:
    _, labels = eval_arrays(textline)
    got = _log_probs(textline, "onnxruntime")
    assert got.shape == (EVAL_LINES, STEPS, CLASSES)
    np.testing.assert_allclose(np.exp(got).sum(axis=-1), 1.0, atol=1e-4)  # log-softmax
    exact, cer = sequence_scores(got, None, labels, 0)
    meta = metadata(textline)
    # The build measured these with ORT fp32 on the same file and crops. Another CPU's kernels
    # round differently (~1e-6 of a log-prob), which can flip a near-tied argmax at one step:
    # allow one line of 256 and two characters of ~3,600.
    chars = int((labels >= 0).sum())
    assert exact / 100 == pytest.approx(float(meta["test_accuracy"]), abs=1 / EVAL_LINES + 1e-6)
    assert cer / 100 == pytest.approx(float(meta["test_cer"]), abs=2 / chars + 1e-6)
    # far above chance (no line of 256 right, CER ~100%), as recorded in docs/zoo.md
    assert exact >= 40.0 and cer <= 10.0
    # the labels are real: decodes against another line's labels match none
    shuffled = np.roll(labels, 1, axis=0)
    assert sequence_scores(got, None, shuffled, 0)[0] < 2.0


@pytest.mark.slow
def test_openvino_fp32_agrees_with_onnxruntime(textline: ZooModel) -> None:
    _, labels = eval_arrays(textline)
    ort_out = _log_probs(textline, "onnxruntime")
    ov_out = _log_probs(textline, "openvino")
    # Both fp32: convs and LSTM gates differ by summation order and OpenVINO's own sigmoid/tanh,
    # ~1e-5 on log-probs of magnitude <= ~40; 1e-3 absolute is 100x that and far below the
    # gaps that decide a decode (a wrong graph is off by whole units).
    np.testing.assert_allclose(ov_out, ort_out, atol=1e-3, rtol=1e-4)
    alphabet = metadata(textline)["alphabet"]
    assert _decoded_text(ov_out, alphabet) == _decoded_text(ort_out, alphabet)
    assert sequence_scores(ov_out, None, labels, 0) == sequence_scores(ort_out, None, labels, 0)


def test_zoo_get_cli_writes_the_shipped_files(tmp_path: Path) -> None:
    dest = tmp_path / "tl"
    result = CliRunner().invoke(app, ["zoo", "get", NAME, str(dest), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "recognition" and doc["model_path"] == str(dest / "model.onnx")
    shipped = resources.files("edgeshift.zoo")
    model_bytes = shipped.joinpath("models", f"{NAME}.onnx").read_bytes()
    assert (dest / "model.onnx").read_bytes() == model_bytes
    assert (dest / "eval.npz").read_bytes() == shipped.joinpath("data", f"{NAME}.npz").read_bytes()


@pytest.mark.slow
def test_optimize_auto_metric_is_sequence(textline: ZooModel, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["optimize", str(textline.model_path), "--data", str(textline.data_path), "--quick",
         "--recipes", "ort-fp32-opt", "--out", str(tmp_path / "art")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("metric: ")]
    # auto saw integer labels [N, L] and class 0 as the argmax at most steps: a CTC blank
    assert line.startswith("metric: sequence — ")
    assert "a CTC blank" in line and "CTC greedy, blank 0" in line
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["metric"]["name"] == "sequence"

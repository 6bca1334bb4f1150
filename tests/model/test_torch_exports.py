"""Files from torch's two ONNX exporters (dynamo, the torch 2.x default, and TorchScript)
through inspect, bench, estimate and optimize: a conv + LSTM + attention module with two
outputs and dynamic batch and sequence axes."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tests.helpers import assert_one_line_error, cli_json, invoke_cli
from tests.targets.conftest import synthetic_calibration

from edgeshift.runtime import open_backend
from edgeshift.targets.host import detect_host, save_calibration

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

FEATURES, CONV, HIDDEN, HEADS, CLASSES = 8, 16, 32, 4, 4
TRACED_SEQ = 16  # the sequence length of the example input
OUTPUTS = ["logits", "features"]


class SeqNet(torch.nn.Module):
    """Conv1d over time, LSTM, multi-head self-attention; logits and the attended sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(FEATURES, CONV, 3, padding=1)
        self.lstm = torch.nn.LSTM(CONV, HIDDEN, batch_first=True)
        self.attn = torch.nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):  # x [batch, seq, FEATURES]
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        h, _ = self.lstm(h)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(dim=1)), a


def _export(module: Any, path: Path, dynamo: bool) -> Path:
    example = (torch.randn(2, TRACED_SEQ, FEATURES),)
    if dynamo:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2)}
        kwargs: dict[str, Any] = {"dynamic_shapes": {"x": dims}}
    else:
        axes = {0: "batch", 1: "seq"}
        kwargs = {"dynamic_axes": {"x": axes, "features": {0: "batch", 1: "seq"}}}
    with warnings.catch_warnings():  # the exporters' own deprecation/tracer chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=["x"], output_names=OUTPUTS, dynamo=dynamo,
            **kwargs,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    module = SeqNet().eval()
    d = tmp_path_factory.mktemp("torch_exports")
    files: dict[str, Any] = {"module": module, "dir": d}
    files["torchscript"] = _export(module, d / "torchscript.onnx", dynamo=False)
    if importlib.util.find_spec("onnxscript") is not None:  # the dynamo exporter needs it
        files["dynamo"] = _export(module, d / "dynamo.onnx", dynamo=True)
        # the same dynamo graph with its weights inside the file (see the xfail below)
        onnx.save(onnx.load(str(files["dynamo"])), str(d / "dynamo-single.onnx"))
        files["dynamo-single"] = d / "dynamo-single.onnx"
    x = np.random.default_rng(0).standard_normal((48, TRACED_SEQ, FEATURES)).astype(np.float32)
    np.savez(d / "eval.npz", x=x)
    return files


def _file(exported: dict[str, Any], kind: str) -> Path:
    if kind not in exported:
        pytest.skip("torch's dynamo exporter needs onnxscript (pip install onnxscript)")
    path: Path = exported[kind]
    return path


def test_both_files_keep_names_and_symbolic_axes(exported: dict[str, Any]) -> None:
    for kind in ("torchscript", "dynamo"):
        proto = onnx.load(str(_file(exported, kind)))
        (inp,) = proto.graph.input
        assert inp.name == "x" and [o.name for o in proto.graph.output] == OUTPUTS
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == FEATURES
        assert "LSTM" in {n.op_type for n in proto.graph.node}
    # torch 2.x's dynamo exporter writes the weights beside the file by default
    assert Path(f"{exported['dynamo']}.data").is_file()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", ["dynamo", "torchscript"])
def test_outputs_match_the_module(exported: dict[str, Any], kind: str, backend: str) -> None:
    x = np.random.default_rng(1).standard_normal((3, TRACED_SEQ, FEATURES)).astype(np.float32)
    got = open_backend(_file(exported, kind), backend=backend, precision="fp32", threads=1).run(
        {"x": x}
    )
    with torch.no_grad():
        want = [t.numpy() for t in exported["module"](torch.from_numpy(x))]
    for name, ref in zip(OUTPUTS, want, strict=True):
        assert got[name].shape == ref.shape
        # fp32 everywhere; an LSTM over 16 steps and a softmax accumulate a few ulps per step
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5)


def test_inspect_counts_the_same_model_from_both_exporters(exported: dict[str, Any]) -> None:
    docs = {k: cli_json("inspect", _file(exported, k), "--shape", f"seq={TRACED_SEQ}", "--json")
            for k in ("dynamo", "torchscript")}  # fmt: skip
    for doc in docs.values():
        assert doc["input_shapes"] == {"x": [1, TRACED_SEQ, FEATURES]}
        by_op = doc["macs_by_op"]
        # by hand: Conv1d k=3 per step and channel; LSTM 4 gates x (input + recurrent) per step
        assert by_op["Conv"] == TRACED_SEQ * CONV * FEATURES * 3
        assert by_op["LSTM"] == TRACED_SEQ * 4 * HIDDEN * (CONV + HIDDEN)
    # the attention is decomposed differently (Gemm vs MatMul) but costs the same
    assert docs["dynamo"]["macs"] == docs["torchscript"]["macs"]


@pytest.mark.parametrize("kind", ["dynamo", "torchscript"])
def test_seq_fit_verdict_matches_the_runtime(exported: dict[str, Any], kind: str) -> None:
    """Both exporters can bake the traced sequence length into a Reshape (TorchScript's trace
    of MultiheadAttention; dynamo after the LSTM): inspect's verdict at another seq must be
    what onnxruntime really does there."""
    path = _file(exported, kind)
    seq = TRACED_SEQ + 4
    result = invoke_cli("inspect", path, "--shape", f"seq={seq}", "--json")
    x = np.zeros((1, seq, FEATURES), np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {"x": x})
        runs = True
    except Exception:  # onnxruntime's Reshape error
        runs = False
    if runs:
        assert result.exit_code == 0, result.output + result.stderr
        assert json.loads(result.stdout)["input_shapes"] == {"x": [1, seq, FEATURES]}
    else:
        assert_one_line_error(result, f"seq={seq} does not fit", f"exactly {TRACED_SEQ}")
    if kind == "torchscript":
        assert not runs  # the traced MultiheadAttention view(tgt_len, ...)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", ["dynamo", "torchscript"])
def test_bench(exported: dict[str, Any], kind: str, backend: str) -> None:
    seq = TRACED_SEQ
    doc = cli_json("bench", _file(exported, kind), "--backend", backend, "--shape", f"seq={seq}",
              "--batch", "2", "-n", "3", "--warmup", "1", "--json")  # fmt: skip
    assert doc["input_shapes"] == {"x": [2, seq, FEATURES]}


@pytest.mark.parametrize("kind", ["dynamo", "torchscript"])
def test_estimate_on_the_host(
    exported: dict[str, Any], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "cache"))
    save_calibration(synthetic_calibration(), detect_host())  # no measuring in tests
    doc = cli_json("estimate", _file(exported, kind), "--target", "host", "-p", "fp32",
              "--shape", f"seq={TRACED_SEQ}", "--json")  # fmt: skip
    assert doc["fits"] is True and doc["latency_ms"] > 0


def _optimize(exported: dict[str, Any], kind: str, out: Path) -> dict[str, Any]:
    doc = cli_json("optimize", _file(exported, kind), "--data", exported["dir"] / "eval.npz", "--quick",
              "--metric", "cosine", "--json", "--out", out)  # fmt: skip
    assert doc["budget_met"] is True, doc["message"]  # the original is always within budget
    assert doc["accuracy"]["drop"] <= doc["metric"]["max_drop"]
    bench = cli_json("bench", out, "--shape", f"seq={TRACED_SEQ}", "-n", "2", "--json")
    assert bench["input_shapes"] == {"x": [1, TRACED_SEQ, FEATURES]}
    return doc


@pytest.mark.parametrize("kind", ["dynamo-single", "torchscript"])
def test_optimize_quick(exported: dict[str, Any], kind: str, tmp_path: Path) -> None:
    doc = _optimize(exported, kind, tmp_path / "art")
    failed = [c["name"] for c in doc["candidates"] if c["status"] == "failed"]
    assert "openvino-fp32" not in failed and "ort-fp32-opt" not in failed, doc["candidates"]


def test_optimize_quick_keeps_external_weights(exported: dict[str, Any], tmp_path: Path) -> None:
    doc = _optimize(exported, "dynamo", tmp_path / "art")
    failed = [c["name"] for c in doc["candidates"] if c["status"] == "failed"]
    assert not failed, failed

"""ort-fp16 opens its converted graph in a child process first: a runtime that crashes there
fails this candidate with one line, and the search (this process) keeps every other one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeshift.errors import OptimizeError
from edgeshift.optimize.recipes import Variant, ort_fp16


def _variant(path: Path) -> Variant:
    return Variant(_model(path), "onnxruntime", "fp32", {"graph_optimization_level": "all"})


def _model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_probe_passes_a_model_that_runs(tmp_path: Path) -> None:
    feeds = {"x": np.ones((3, 4), np.float32)}
    ort_fp16._probe(_variant(tmp_path / "m.onnx"), feeds, tmp_path)  # no error


def test_a_crash_in_the_child_is_this_recipes_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child dies by SIGSEGV as ORT 1.32 does on the recognizer's fp16 graph.
    monkeypatch.setattr(
        ort_fp16, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    )
    with pytest.raises(OptimizeError) as err:
        ort_fp16._probe(_variant(tmp_path / "m.onnx"), {}, tmp_path)
    message = str(err.value)
    assert "crashed (SIGSEGV)" in message and "--recipes" in message and "\n" not in message


def test_an_error_in_the_child_names_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_fp16, "_PROBE", "raise RuntimeError('no kernel for Foo(16)')")
    with pytest.raises(
        OptimizeError,
        match=r"could not run the converted model \(RuntimeError: no kernel for Foo\(16\)\)",
    ):
        ort_fp16._probe(_variant(tmp_path / "m.onnx"), {}, tmp_path)


def test_the_recognizer_search_survives_ort_fp16(tmp_path: Path) -> None:
    """On the zoo's CNN + BiLSTM recognizer ORT 1.32 crashed the whole search process in the
    fp16 candidate (avx512_fp16 hosts); now that candidate fails alone, or runs where ORT copes,
    or is skipped on CPUs without fp16 arithmetic, and the search ends with an artifact."""
    from edgeshift import zoo
    from edgeshift.optimize import optimize

    m = zoo.get("textline-crnn", tmp_path / "m")
    result = optimize(
        m.model_path, m.data_path, recipes=["ort-fp32-opt", "ort-fp16"], quick=True,
        out=tmp_path / "art",
    )  # fmt: skip
    fp16 = next(c for c in result.candidates if c.name == "ort-fp16")
    assert fp16.status in ("skipped", "failed", "accepted", "rejected", "chosen"), fp16
    if fp16.status == "failed":
        assert "onnxruntime crashed" in fp16.reason or "could not run" in fp16.reason
    assert result.artifact_dir is not None and (result.artifact_dir / "model.onnx").is_file()

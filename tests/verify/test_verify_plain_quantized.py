"""A plain quantized .onnx (no manifest) is held to the int8 criteria, not fp32's 1e-4.

The README's `edgeshift verify kws_ref_model.onnx --arch cortex-m4` failed: the MCU's outputs
were one int8 step from x86's on a few elements (rel error 1/128 > 1e-4) while every top-1
agreed, because a plain .onnx was always judged as fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.verify import runners as runners_module
from edgeshift.verify import verify
from edgeshift.verify.pipeline import tolerance_for_plain_model
from edgeshift.verify.runners import Job, JobResult, NativeRunner, register_runner


def _qdq_classifier(path: Path) -> Path:
    """x [batch, 8] float → Q/DQ → MatMul (int8 weights, dequantized) → Q/DQ → logits [batch, 4]."""
    rng = np.random.default_rng(0)
    w = rng.integers(-60, 60, size=(8, 4)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_plain_model_is_fp32_unless_its_graph_is_quantized(
    tmp_path: Path, mlp_path: Path
) -> None:
    assert tolerance_for_plain_model(onnx.load(mlp_path)).precision == "fp32"
    quantized = onnx.load(_qdq_classifier(tmp_path / "qdq.onnx"))
    assert tolerance_for_plain_model(quantized).precision == "int8"


class _OneStepOff(NativeRunner):
    """Another ISA's requantization: the smallest logit of every row one int8 step lower."""

    emulated = True

    def run(self, jobs: Sequence[Job], jobdir: Path) -> list[JobResult]:
        results = super().run(jobs, jobdir)
        for result in results:
            assert result.outputs is not None
            logits = result.outputs["logits"].copy()
            rows = np.arange(len(logits))
            logits[rows, logits.argmin(axis=1)] -= np.float32(0.05)  # one step of scale 0.05
            result.outputs["logits"] = logits
        return results


def test_one_int8_step_apart_passes_on_top1_where_fp32_would_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _qdq_classifier(tmp_path / "qdq.onnx")
    monkeypatch.setattr(runners_module, "_RUNNERS", dict(runners_module._RUNNERS))
    register_runner("cortex-m4", lambda: _OneStepOff())
    report = verify(model, ["cortex-m4"])
    (result,) = report.results
    (check,) = result.outputs
    assert check.agreement.max_rel_error > 1e-4  # fp32's criterion would have failed it
    assert check.agreement.top1_agreement_pct == 100.0
    assert result.status == "pass" and report.passed, result.message
    assert check.criterion == "top-1 100.00% >= 99.5%"

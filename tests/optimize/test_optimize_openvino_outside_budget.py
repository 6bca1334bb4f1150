"""The report line for a plain runtime default that is faster than the chosen variant but
outside the budget (OpenVINO's own default is bf16 on CPUs that have it).

The model is a classifier whose logits differ by less than bf16 can tell apart (256 + a
fraction: bf16 spaces values 2 apart there), so OpenVINO at bf16 loses the argmax that fp32
keeps. Which runtime is faster is a wall-clock fact no test may assert, so the wiring is
tested with the measured timings replaced by fixed ones; the real search still has to time
the rejected default (its p50 is in the manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optimize_models import save_model
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.optimize import optimize
from edgeshift.optimize import search as search_module
from edgeshift.optimize.candidates import Candidate
from edgeshift.optimize.evaluate import Timing
from edgeshift.optimize.manifest import CandidateRecord
from edgeshift.optimize.selection import (
    outside_budget_default,
    rejected_defaults,
    set_speedups,
)
from edgeshift.runtime.openvino import cpu_capabilities

needs_bf16 = pytest.mark.skipif(
    "BF16" not in cpu_capabilities(), reason="OpenVINO's default is bf16 only on bf16 CPUs"
)


def _narrow_margin_classifier() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc")]
    graph = helper.make_graph(
        nodes,
        "narrow_margin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.eye(10, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def narrow(tmp_path: Path) -> tuple[Path, Path]:
    model = save_model(_narrow_margin_classifier(), tmp_path / "narrow.onnx")
    x = 256.0 + np.random.default_rng(0).random((64, 10))
    np.savez(tmp_path / "narrow.npz", x=x.astype(np.float32))
    return model, tmp_path / "narrow.npz"


def _fixed_timings(ms: dict[str, float]) -> Any:
    def measure(survivors: list[Candidate], *args: Any) -> None:
        for c in survivors:
            p50 = ms[c.record.name]
            c.timing = Timing(p50, p50, p50, 1e3 / p50, 10)
            c.record.p50_ms = c.record.p90_ms = c.record.mean_ms = p50
            c.record.throughput_items_s = 1e3 / p50

    return measure


def _candidate(name: str, p50_ms: float, status: str, drop: float) -> Candidate:
    record = CandidateRecord(
        name=name,
        recipe="none" if name == "original" else "openvino_float",
        backend="openvino",
        precision="bf16" if name == "openvino-bf16" else "fp32",
        status=status,  # type: ignore[arg-type]
        reason="",
        drop=drop,
        p50_ms=p50_ms,
    )
    return Candidate(record, timing=Timing(p50_ms, p50_ms, p50_ms, 1e3 / p50_ms, 10))


def test_line_names_the_faster_default_and_its_drop() -> None:
    original = _candidate("original", 10.0, "chosen", 0.0)
    bf16 = _candidate("openvino-bf16", 4.0, "rejected", 12.5)
    set_speedups([original, bf16], "latency")
    note = outside_budget_default(
        original, [bf16], "sequence", "exact-match points", 1.0, "latency"
    )
    assert note is not None
    assert note.candidate == "openvino-bf16" and note.drop == 12.5 and note.max_drop == 1.0
    assert note.speedup_over_chosen == pytest.approx(2.5)
    assert note.speedup_over_original == pytest.approx(2.5)
    assert note.line == (
        "OpenVINO's own default (bf16) is 2.50x faster than the original (ORT fp32) but its "
        "sequence drops 12.5 exact-match points (budget 1); not chosen"
    )


def test_no_line_when_the_default_is_slower_or_tied() -> None:
    chosen = _candidate("openvino-int8", 4.0, "chosen", 0.3)
    for p50 in (5.0, 3.95):  # slower; within the 2% tie margin
        bf16 = _candidate("openvino-bf16", p50, "rejected", 12.5)
        assert outside_budget_default(chosen, [bf16], "top1", "points", 1.0, "latency") is None
    assert outside_budget_default(chosen, [], "top1", "points", 1.0, "latency") is None


def test_only_a_rejected_openvino_default_is_timed_again() -> None:
    kept = _candidate("openvino-bf16", 4.0, "accepted", 0.0)
    other = _candidate("openvino-fp16", 4.0, "rejected", 9.0)
    for c in (kept, other):
        c.variant = object()  # type: ignore[assignment]
    assert rejected_defaults([kept, other], ["FP32", "BF16", "INT8"]) == []
    kept.record.status = "rejected"
    assert rejected_defaults([kept, other], ["FP32", "BF16", "INT8"]) == [kept]
    # Without bf16 OpenVINO's default is fp32: the bf16 candidate is not a default there.
    assert rejected_defaults([kept, other], ["FP32", "INT8"]) == []


@needs_bf16
@pytest.mark.slow
def test_search_times_the_rejected_default(narrow: tuple[Path, Path]) -> None:
    model, data = narrow
    result = optimize(model, data, metric="top1", recipes=["openvino-bf16"], quick=True)
    bf16 = next(c for c in result.candidates if c.name == "openvino-bf16")
    assert bf16.status == "rejected" and bf16.drop is not None and bf16.drop > 50
    assert bf16.p50_ms is not None and bf16.speedup is not None  # timed beside the original
    note = result.outside_budget_default
    assert note is result.manifest.outside_budget_default
    if note is not None:  # whether bf16 wins on this tiny model is the machine's business
        assert note.candidate == "openvino-bf16" and note.drop == bf16.drop


@needs_bf16
@pytest.mark.slow
def test_cli_prints_the_line_and_json_carries_it(
    narrow: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = narrow
    timings = _fixed_timings({"original": 10.0, "openvino-bf16": 4.0})
    monkeypatch.setattr(search_module, "measure_candidates", timings)
    args = ["optimize", str(model), "--data", str(data), "--metric", "top1", "--quick"]
    args += ["--recipes", "openvino-bf16"]
    table = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert (
        "note: OpenVINO's own default (bf16) is 2.50x faster than the original (ORT fp32)" in text
    )
    assert "budget 1); not chosen" in text
    as_json = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    field = json.loads(as_json.stdout)["outside_budget_default"]
    assert field["candidate"] == "openvino-bf16" and field["speedup_over_chosen"] == 2.5
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["outside_budget_default"]["line"] == field["line"]

"""The search end to end on real runtimes: budgets re-checked independently, a known-bad
candidate refused, accuracy recovery, selection, the artifact and its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from optimize_models import hot_pixel_cnn, hot_pixel_data, paddle_style_cnn, save_model

from edgeshift import zoo
from edgeshift.errors import BudgetError, DataError, OptimizeError
from edgeshift.model.load import load_model, sha256_file
from edgeshift.optimize import OptimizeResult, optimize, read_manifest
from edgeshift.optimize import search as search_module
from edgeshift.optimize import selection as selection_module
from edgeshift.optimize.evaluate import Timing
from edgeshift.optimize.search import evaluation_split
from edgeshift.runtime import open_backend

pytestmark = pytest.mark.slow


def _fake_timing(order: list[str]):
    """measure_side_by_side stand-in: candidates named earlier in ORDER are faster; the rest
    (the original included) tie last. Selection logic is what is under test, not the clock."""

    def fake(backends, feeds, iterations, warmup, rounds):
        timings = []
        for backend in backends:
            name = getattr(backend, "_edgeshift_candidate", "")
            rank = order.index(name) if name in order else len(order)
            ms = 1.0 + rank
            timings.append(Timing(ms, ms, ms, 1e3 / ms, 1))
        return timings

    return fake


@pytest.fixture
def rigged(monkeypatch: pytest.MonkeyPatch):
    """Tag each opened backend with its candidate's recipe so the fake clock can rank it."""
    real_try = search_module.try_candidate

    def tagged(recipe, *args, **kwargs):
        candidate = real_try(recipe, *args, **kwargs)
        if candidate.backend is not None:
            candidate.backend._edgeshift_candidate = recipe.name
        return candidate

    monkeypatch.setattr(search_module, "try_candidate", tagged)

    def rig(order: list[str]) -> None:
        monkeypatch.setattr(selection_module, "measure_side_by_side", _fake_timing(order))

    return rig


def _held_out_outputs(artifact: Path | str, data: dict, seed: int = 0) -> np.ndarray:
    """Run ARTIFACT (as `bench`/`serve` would open it) over the held-out split, batch 1."""
    n = len(next(iter(data.values())))
    _, held = evaluation_split(n, seed, quick=True)
    backend = open_backend(artifact)
    outs = [backend.run({k: v[i : i + 1] for k, v in data.items()}) for i in held]
    name = backend.outputs[0].name
    return np.concatenate([o[name] for o in outs]), held


def test_chosen_artifact_meets_budget_when_reevaluated(
    digits_mlp: zoo.ZooModel, tmp_path: Path, rigged
) -> None:
    rigged(["openvino-bf16"])  # make the bf16 variant win, so its runtime options must apply
    out = tmp_path / "art"
    result = optimize(
        digits_mlp.model_path,
        digits_mlp.data_path,
        recipes=["ort-int8-dynamic", "openvino-bf16"],
        out=out,
        quick=True,
        max_drop=2.0,
    )
    assert result.chosen.name == "openvino-bf16"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_file"] == "model.onnx"
    assert manifest["backend"] == "openvino"
    assert manifest["runtime_options"]["precision"] == "bf16"
    assert manifest["artifact_sha256"] == sha256_file(out / "model.onnx")
    assert manifest["source_sha256"] == sha256_file(digits_mlp.model_path)
    assert {c["name"] for c in manifest["candidates"]} == {
        "original",
        "ort-int8-dynamic",
        "openvino-bf16",
    }

    # Independent re-evaluation: accuracy against the labels on the held-out split.
    npz = dict(np.load(digits_mlp.data_path))
    labels = npz.pop("labels")
    chosen_out, held = _held_out_outputs(out, npz)
    original_out, _ = _held_out_outputs(digits_mlp.model_path, npz)
    chosen_acc = float(np.mean(chosen_out.argmax(1) == labels[held]) * 100)
    original_acc = float(np.mean(original_out.argmax(1) == labels[held]) * 100)
    assert original_acc - chosen_acc <= 2.0
    assert chosen_acc == pytest.approx(manifest["accuracy"]["chosen"])
    assert original_acc == pytest.approx(manifest["accuracy"]["original"])
    assert open_backend(out).precision == "bf16"
    assert read_manifest(out).budget_met


def test_dynamic_int8_of_conv_is_refused(hot_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = hot_cnn
    result = optimize(
        model,
        data,
        recipes=["ort-int8-dynamic-conv"],
        out=tmp_path / "art",
        quick=True,
        recovery=False,
    )
    record = next(c for c in result.candidates if c.name == "ort-int8-dynamic-conv")
    assert record.status == "rejected"
    assert record.drop is not None and record.drop > 10.0  # points of top-1 agreement
    assert "top1 drop" in record.reason
    # No variant met the budget: the original is the artifact, and that is said.
    assert not result.budget_met
    assert result.chosen.name == "original"
    assert "no candidate met the budget" in result.message
    assert sha256_file(tmp_path / "art" / "model.onnx") == sha256_file(model)
    with pytest.raises(BudgetError, match="no candidate met the budget"):
        optimize(
            model, data, recipes=["ort-int8-dynamic-conv"], quick=True, recovery=False, require=True
        )


def test_recovery_brings_static_int8_back_inside_budget(
    hot_cnn: tuple[Path, Path], tmp_path: Path, rigged
) -> None:
    rigged(["ort-int8-static"])
    model, data = hot_cnn
    out = tmp_path / "art"
    result = optimize(model, data, recipes=["ort-int8-static"], out=out, quick=True)
    record = result.chosen
    assert record.name == "ort-int8-static"
    assert record.float_nodes == ["conv1"]  # the conv that reads the hot-pixel input
    assert record.reason.startswith("fastest")
    steps = record.recovery_steps
    assert steps and steps[-1]["drop"] <= 1.0
    # Before recovery it failed: without it, the same candidate is rejected.
    plain = optimize(model, data, recipes=["ort-int8-static"], quick=True, recovery=False)
    assert next(c for c in plain.candidates if c.name == "ort-int8-static").status == "rejected"
    # Re-evaluated independently: agreement with the original on the held-out split.
    x = dict(np.load(data))
    got, _ = _held_out_outputs(out, x)
    want, _ = _held_out_outputs(model, x)
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)) * 100)
    assert 100.0 - agreement <= 1.0
    quantized = load_model(out).proto
    ops = [n.op_type for n in quantized.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    conv1 = next(n for n in quantized.graph.node if n.name == "conv1")
    assert conv1.input[0] == "x"  # kept in float: reads the raw input


def test_slow_recovered_variant_is_rejected(hot_cnn: tuple[Path, Path], rigged) -> None:
    rigged([])  # everything ties: the recovered variant is no faster than the original
    model, data = hot_cnn
    result = optimize(model, data, recipes=["ort-int8-static"], quick=True)
    record = next(c for c in result.candidates if c.name == "ort-int8-static")
    assert record.status == "rejected"
    assert "no faster than original" in record.reason
    # Accurate enough but slow: the budget was met, the original simply stayed fastest.
    assert result.budget_met
    assert result.message.startswith("no candidate within budget was faster")


def test_ties_go_to_the_smaller_file(digits_cnn: zoo.ZooModel, rigged) -> None:
    rigged([])  # all equally fast
    result = optimize(
        digits_cnn.model_path,
        digits_cnn.data_path,
        recipes=["ort-fp32-opt", "ort-int8-static"],
        quick=True,
        max_drop=5.0,
    )
    eligible = [c for c in result.candidates if c.status in ("chosen", "accepted")]
    assert result.chosen.size_bytes == min(c.size_bytes for c in eligible)
    assert result.chosen.name == "ort-int8-static"


def test_search_is_deterministic_in_its_verdicts(digits_mlp: zoo.ZooModel, rigged) -> None:
    rigged([])
    runs: list[OptimizeResult] = [
        optimize(
            digits_mlp.model_path,
            digits_mlp.data_path,
            recipes=["ort-int8-static"],
            quick=True,
            seed=7,
        )
        for _ in range(2)
    ]
    first, second = ([(c.name, c.status, c.score) for c in r.candidates] for r in runs)
    assert first == second


def test_unavailable_recipes_are_skipped_with_a_reason(digits_mlp: zoo.ZooModel) -> None:
    result = optimize(
        digits_mlp.model_path,
        digits_mlp.data_path,
        recipes=["ort-fp16", "openvino-fp16"],
        quick=True,
    )
    by_name = {c.name: c for c in result.candidates}
    host = result.manifest.host
    if "FP16" not in host.openvino_capabilities:
        assert by_name["openvino-fp16"].status == "skipped"
        assert "not supported on this CPU" in by_name["openvino-fp16"].reason
    if "avx512_fp16" not in host.cpu_features and "asimdhp" not in host.cpu_features:
        assert by_name["ort-fp16"].status == "skipped"
        assert "fp16" in by_name["ort-fp16"].reason


def test_a_failing_build_is_recorded_not_raised(
    digits_mlp: zoo.ZooModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeshift.optimize.recipes.ort_static_int8 import OrtStaticInt8

    def broken(self, ctx, exclude=()):
        raise RuntimeError("calibration exploded\nsecond line")

    monkeypatch.setattr(OrtStaticInt8, "build", broken)
    result = optimize(
        digits_mlp.model_path,
        digits_mlp.data_path,
        recipes=["ort-int8-static", "ort-fp32-opt"],
        quick=True,
    )
    record = next(c for c in result.candidates if c.name == "ort-int8-static")
    assert record.status == "failed"
    assert record.reason == "build failed: calibration exploded"
    assert result.budget_met


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recipes": ["nope"]}, "unknown recipe 'nope'"),
        ({"backends": ["tensorrt"]}, "unknown backend 'tensorrt'"),
        ({"objective": "energy"}, "unknown objective"),
        ({"max_drop": -1.0}, "--max-drop must be"),
        ({"metric": "f1"}, "unknown metric"),
        ({"backends": ["openvino"], "recipes": ["ort-fp32-opt"]}, "leave no candidate"),
    ],
)
def test_bad_arguments(digits_mlp: zoo.ZooModel, kwargs: dict, message: str) -> None:
    with pytest.raises(OptimizeError, match=message):
        optimize(digits_mlp.model_path, digits_mlp.data_path, quick=True, **kwargs)


def test_openvino_int8_via_nncf(digits_cnn: zoo.ZooModel, tmp_path: Path, rigged) -> None:
    rigged(["openvino-int8"])
    out = tmp_path / "art"
    result = optimize(
        digits_cnn.model_path,
        digits_cnn.data_path,
        recipes=["openvino-int8"],
        out=out,
        quick=True,
        max_drop=5.0,
    )
    record = result.chosen
    assert record.name == "openvino-int8", record.reason
    assert record.params["tool"] == "nncf.quantize"
    manifest = read_manifest(out)
    assert manifest.backend == "openvino"
    ops = {n.op_type for n in load_model(out).proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8 as QDQ, still ONNX
    # The artifact reproduces the scored variant: same top-1 on the held-out split.
    npz = dict(np.load(digits_cnn.data_path))
    labels = npz.pop("labels")
    got, held = _held_out_outputs(out, npz)
    assert float(np.mean(got.argmax(1) == labels[held]) * 100) == pytest.approx(
        manifest.accuracy.chosen
    )


def test_alternative_setting_tried_before_recovery(
    hot_cnn: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeshift.optimize.recipes.ort_dynamic_int8 import OrtDynamicInt8

    class ConvFirst(OrtDynamicInt8):
        """Conv included first (ruins this model); MatMul-only as the alternative."""

        def __init__(self) -> None:
            super().__init__(with_conv=True)
            self.default = True

        def alternatives(self, ctx):
            plain = OrtDynamicInt8()
            plain.tag = "-alt"
            return [plain]

    monkeypatch.setattr(search_module, "all_recipes", lambda: [ConvFirst()])
    model, data = hot_cnn
    result = optimize(model, data, quick=True, recovery=False)
    record = next(c for c in result.candidates if c.name == "ort-int8-dynamic-conv")
    tried = record.params["settings_tried"]
    assert [t["params"]["op_types"] for t in tried] == [
        ["MatMul", "Gemm", "Conv"],
        ["MatMul", "Gemm"],
    ]
    assert tried[0]["drop"] > 1.0 >= tried[1]["drop"]
    assert record.status in ("accepted", "chosen")
    assert record.drop == tried[1]["drop"]


def test_paddle_style_model_is_repaired_then_quantized(tmp_path: Path) -> None:
    model = save_model(paddle_style_cnn(), tmp_path / "paddle.onnx")
    data = tmp_path / "paddle.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32))
    result = optimize(
        model, data, recipes=["ort-int8-static", "openvino-int8"], quick=True, max_drop=10.0
    )
    notes = " ".join(result.manifest.repair_notes)
    assert "moved 2 Constant node(s) into initializers" in notes
    assert "upgraded opset 12 -> 13" in notes
    by_name = {c.name: c for c in result.candidates}
    original_bytes = by_name["original"].size_bytes
    for name in ("ort-int8-static", "openvino-int8"):
        record = by_name[name]
        assert record.status in ("accepted", "chosen", "rejected"), record.reason
        # The weights were found and stored as int8: the file shrank to well under half.
        assert record.size_bytes is not None and record.size_bytes < original_bytes / 2


def test_throughput_objective_at_batch(digits_mlp: zoo.ZooModel, rigged) -> None:
    rigged(["ort-int8-dynamic"])
    result = optimize(
        digits_mlp.model_path,
        digits_mlp.data_path,
        recipes=["ort-int8-dynamic"],
        quick=True,
        batch=4,
        objective="throughput",
        max_drop=5.0,
    )
    perf = result.manifest.performance
    assert perf.batch == 4 and perf.objective == "throughput"
    chosen, original = result.chosen, result.candidates[0]
    assert chosen.name == "ort-int8-dynamic"
    assert chosen.speedup == pytest.approx(chosen.throughput_items_s / original.throughput_items_s)


def test_fixed_batch_model_refuses_another_batch(tmp_path: Path) -> None:
    model = hot_pixel_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    path = save_model(model, tmp_path / "fixed.onnx")
    data = tmp_path / "fixed.npz"
    np.savez(data, **hot_pixel_data())
    with pytest.raises(DataError, match="fixes its batch axis at 1: use --batch 1"):
        optimize(path, data, batch=8, quick=True, recipes=["ort-fp32-opt"])
    assert optimize(path, data, quick=True, recipes=["ort-fp32-opt"]).budget_met


def test_reference_falls_back_to_openvino(
    digits_mlp: zoo.ZooModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeshift.errors import BackendError

    real_open = search_module.open_backend

    def ort_refuses(path, backend=None, *args, **kwargs):
        if backend == "onnxruntime":
            raise BackendError("onnxruntime cannot load model.onnx: unsupported op")
        return real_open(path, backend, *args, **kwargs)

    monkeypatch.setattr(search_module, "open_backend", ort_refuses)
    result = optimize(
        digits_mlp.model_path, digits_mlp.data_path, recipes=["openvino-fp32"], quick=True
    )
    original = result.candidates[0]
    assert original.backend == "openvino"
    assert "OpenVINO fp32" in original.params["reference"]
    assert "unsupported op" in original.params["reference"]

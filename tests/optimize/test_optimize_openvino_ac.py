"""OpenVINO int8 through NNCF: accuracy control (nncf.quantize_with_accuracy_control) driven
by the search's own metric and held-out split, and the preset alternatives of the plain recipe.

The model is built so that int8 breaks one layer: a constant hot pixel on a channel the first
conv ignores forces its input scale to span 500, which rounds the real signal away. NNCF's
accuracy control must find that layer, keep it in float, and leave the rest int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optimize_models import paddle_style_cnn, save_model

from edgeshift.optimize import optimize
from edgeshift.optimize.recipes import all_recipes
from edgeshift.optimize.recipes.openvino_nncf_int8 import NNCFSettings, OpenVINONNCFInt8

pytestmark = pytest.mark.slow


def test_accuracy_control_keeps_the_broken_layer_in_float(hot_cnn: tuple[Path, Path]) -> None:
    model, data = hot_cnn
    # 10 points: the quick held-out split is 36 samples, and this random-weight net has small
    # logit margins, so int8 in conv2/fc alone moves 1-2 argmaxes (3-6 points); the hot input
    # in int8 moves ~19 of them (over 50 points).
    result = optimize(
        model,
        data,
        metric="top1",
        max_drop=10.0,
        recipes=["openvino-int8", "openvino-int8-ac"],
        quick=True,
        recovery=False,
    )
    by_name = {c.name: c for c in result.candidates}
    plain, ac = by_name["openvino-int8"], by_name["openvino-int8-ac"]
    # Without control the hot pixel costs int8 far more than the 1-point budget ...
    first_try = plain.params.get("settings_tried", [{"drop": plain.drop}])[0]["drop"]
    assert first_try > 30.0
    # ... accuracy control meets the search's own budget, on the search's own metric,
    assert ac.status in ("accepted", "chosen"), ac.reason
    assert ac.drop is not None and ac.drop <= result.manifest.metric.max_drop
    assert ac.params["tool"] == "nncf.quantize_with_accuracy_control"
    assert ac.params["max_drop"] == result.manifest.metric.max_drop
    assert ac.params["drop_type"] == "absolute"
    # ... by keeping the first conv (the one reading the hot input) in float, and only it.
    assert ac.params["restored_layers"] == ["conv1"]
    # The search's recovery does not run on top of NNCF's own.
    assert ac.recovery_steps == [] and ac.float_nodes == []


def test_presets_are_tried_before_layer_fallback(hot_cnn: tuple[Path, Path]) -> None:
    model, data = hot_cnn
    result = optimize(model, data, metric="top1", recipes=["openvino-int8"], quick=True)
    plain = next(c for c in result.candidates if c.name == "openvino-int8")
    tried = [t["params"] for t in plain.params["settings_tried"]]
    # A conv net: NNCF's default preset, then the mixed (asymmetric activation) preset, then
    # the float ops at fp32 (where the CPU has bf16); each with its own params recorded.
    assert tried[0]["preset"] is None and tried[1]["preset"] == "mixed"
    precisions = [t["float_ops_precision"] for t in tried]
    assert precisions[0] in ("bf16", "fp32") and precisions[-1] == "fp32"


def test_settings_tags_tell_builds_apart() -> None:
    tags = {
        NNCFSettings().tag,
        NNCFSettings(smooth_quant_alpha=-1.0).tag,
        NNCFSettings(smooth_quant_alpha=0.5).tag,
        NNCFSettings(preset="mixed").tag,
        NNCFSettings(preset="mixed", fast_bias_correction=False).tag,
    }
    assert len(tags) == 5
    # Only the runtime precision differs: the same NNCF build is reused.
    assert NNCFSettings(float_ops="fp32").tag == NNCFSettings().tag
    assert OpenVINONNCFInt8(NNCFSettings(preset="mixed")).tag == "-mixed"


def test_accuracy_control_is_a_recipe_of_the_search() -> None:
    recipe = next(r for r in all_recipes() if r.name == "openvino-int8-ac")
    assert recipe.backend == "openvino" and recipe.precision == "int8"
    assert recipe.quantized is False  # no second recovery on top of NNCF's
    assert recipe.default is False  # minutes per model: asked for by name


def test_nncf_quantizes_a_constant_weight_opset_11_graph(tmp_path: Path) -> None:
    # Paddle2ONNX's shape: weights in Constant nodes, unnamed nodes, opset 11.
    model = save_model(paddle_style_cnn(opset=11), tmp_path / "paddle11.onnx")
    data = tmp_path / "paddle11.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32))
    result = optimize(
        model, data, recipes=["openvino-int8", "openvino-int8-ac"], quick=True, max_drop=10.0
    )
    assert "upgraded opset 11 -> 13" in " ".join(result.manifest.repair_notes)
    original_bytes = result.candidates[0].size_bytes
    for record in result.candidates[1:]:
        assert record.status in ("accepted", "chosen", "rejected"), record.reason
        assert record.size_bytes is not None and record.size_bytes < original_bytes / 2


def test_a_failing_accuracy_control_says_what_to_do(
    hot_cnn: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("type")  # what the issue saw: "build failed: type"

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", broken)
    model, data = hot_cnn
    result = optimize(model, data, metric="top1", recipes=["openvino-int8-ac"], quick=True)
    record = next(c for c in result.candidates if c.name == "openvino-int8-ac")
    assert record.status == "failed"
    assert record.reason.startswith(
        "build failed: openvino-int8-ac: NNCF could not quantize the model (KeyError: 'type')"
    )
    assert "leave openvino-int8-ac out with --recipes" in record.reason
    assert "\n" not in record.reason

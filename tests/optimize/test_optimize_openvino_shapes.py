"""Candidates are timed as `edgeshift bench` runs them: specialised to the feeds' shapes
(OpenVINO compiles a static model), unless the timed batches differ in shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from optimize_models import hot_pixel_cnn, save_model

from edgeshift.optimize.selection import fix_shapes
from edgeshift.runtime import open_backend


def _feeds(*batches: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.zeros((b, 2, 8, 8), np.float32)} for b in batches]


def test_openvino_is_specialised_to_one_shared_shape(tmp_path: Path) -> None:
    model = save_model(hot_pixel_cnn(), tmp_path / "m.onnx")
    backend = open_backend(model, "openvino", "fp32", 1)
    assert backend.inputs[0].shape == (None, 2, 8, 8)
    fix_shapes([backend], _feeds(1, 1))
    assert backend.inputs[0].shape == (1, 2, 8, 8)
    assert backend.run(_feeds(1)[0])["logits"].shape == (1, 10)


def test_mixed_shapes_stay_dynamic(tmp_path: Path) -> None:
    model = save_model(hot_pixel_cnn(), tmp_path / "m.onnx")
    backend = open_backend(model, "openvino", "fp32", 1)
    fix_shapes([backend], _feeds(1, 2))
    assert backend.inputs[0].shape == (None, 2, 8, 8)


def test_a_backend_that_cannot_be_specialised_is_timed_as_it_is(tmp_path: Path) -> None:
    model = save_model(hot_pixel_cnn(), tmp_path / "m.onnx")
    backend = open_backend(model, "openvino", "fp32", 1)
    fix_shapes([backend], [{"x": np.zeros((1, 3, 8, 8), np.float32)}])  # wrong channels
    assert backend.inputs[0].shape == (None, 2, 8, 8)

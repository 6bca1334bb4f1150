"""Metrics against hand computation, auto choice, budgets, and user metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeshift.errors import OptimizeError
from edgeshift.optimize.metrics import (
    auto_metric,
    builtin_metric,
    check_metric_name,
    resolve_metric,
    user_metric,
)


def test_top1_accuracy_with_labels() -> None:
    out = {"y": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])}
    labels = np.array([1, 0, 0, 0])
    metric = builtin_metric("top1", "y", "test")
    # argmax = [1, 0, 1, 0]; 3 of 4 match.
    assert metric.score(out, out, labels) == pytest.approx(75.0)
    assert metric.drop(100.0, 75.0) == pytest.approx(25.0)


def test_top1_agreement_without_labels() -> None:
    ref = {"y": np.array([[1.0, 0.0], [0.0, 1.0]])}
    got = {"y": np.array([[1.0, 0.0], [1.0, 0.0]])}
    assert builtin_metric("top1", "y", "t").score(got, ref, None) == pytest.approx(50.0)


def test_cosine_hand_computed() -> None:
    ref = {"e": np.array([[1.0, 0.0], [0.0, 2.0]])}
    got = {"e": np.array([[1.0, 1.0], [0.0, 5.0]])}
    # cos((1,1),(1,0)) = 1/sqrt(2); cos((0,5),(0,2)) = 1; mean = (0.70711 + 1) / 2.
    score = builtin_metric("cosine", "e", "t").score(got, ref, None)
    assert score == pytest.approx((1 / np.sqrt(2) + 1) / 2)


def test_cosine_zero_vectors() -> None:
    ref = {"e": np.zeros((2, 3))}
    got = {"e": np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    # Both zero: perfect agreement (1); zero vs non-zero: dot 0 -> 0.
    assert builtin_metric("cosine", "e", "t").score(got, ref, None) == pytest.approx(0.5)


def test_rmse_and_max_abs() -> None:
    ref = {"r": np.array([[1.0], [2.0], [3.0], [4.0]])}
    got = {"r": np.array([[1.0], [2.0], [3.0], [6.0]])}
    rmse = builtin_metric("rmse", "r", "t")
    assert rmse.score(got, ref, None) == pytest.approx(np.sqrt(4 / 4))
    assert not rmse.higher_is_better
    assert rmse.drop(0.0, 1.0) == pytest.approx(1.0)
    # Default budget: 1% of the target's RMS = 0.01 * sqrt((1+4+9+16)/4).
    assert rmse.default_max_drop(ref, None, 0.0) == pytest.approx(0.01 * np.sqrt(7.5))
    max_abs = builtin_metric("max-abs", "r", "t")
    assert max_abs.score(got, ref, None) == pytest.approx(2.0)
    assert max_abs.default_max_drop(ref, None, 0.0) == pytest.approx(0.04)


def test_iou_binary_maps() -> None:
    ref = np.zeros((1, 1, 2, 2))
    ref[0, 0, 0, :] = 0.9  # foreground: top row
    got = np.zeros((1, 1, 2, 2))
    got[0, 0, :, 0] = 0.9  # foreground: left column
    # intersection 1 pixel, union 3 pixels -> 33.3 points.
    metric = builtin_metric("iou", "m", "t", {"m": ref})
    assert metric.score({"m": got}, {"m": ref}, None) == pytest.approx(100 / 3)


def test_iou_multiclass_argmax() -> None:
    ref = np.zeros((1, 3, 1, 2))
    ref[0, 1, 0, 0] = ref[0, 2, 0, 1] = 5.0  # classes [1, 2]
    got = np.zeros((1, 3, 1, 2))
    got[0, 1, 0, 0] = got[0, 1, 0, 1] = 5.0  # classes [1, 1]
    # class 1: inter 1 / union 2; class 2: 0 / 1 -> mean 25 points.
    metric = builtin_metric("iou", "m", "t", {"m": ref})
    assert metric.score({"m": got}, {"m": ref}, None) == pytest.approx(25.0)


def test_auto_picks_by_shape_and_says_why() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 10))
    assert auto_metric({"y": logits}, "y", np.arange(8) % 10).name == "top1"
    emb = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    chosen = auto_metric({"e": emb}, "e", None)
    assert chosen.name == "cosine" and "unit-norm" in chosen.reason
    assert auto_metric({"logits": logits}, "logits", None).name == "top1"
    assert auto_metric({"r": logits[:, :1]}, "r", None).name == "rmse"
    assert auto_metric({"m": rng.random((2, 1, 4, 4))}, "m", None).name == "iou"
    assert auto_metric({"h": rng.random((2, 5, 4))}, "h", None).name == "cosine"
    assert auto_metric({"y": logits}, "y", rng.random((8, 10))).name == "rmse"


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(OptimizeError, match="unknown metric 'f1'"):
        check_metric_name("f1")
    with pytest.raises(OptimizeError, match="unknown metric"):
        resolve_metric("accuracy", {"y": np.zeros((1, 2))}, "y", None)


def test_user_metric_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mymetric.py"
    path.write_text(
        "import numpy as np\n"
        "def neg_l1(outputs, reference, labels):\n"
        "    return -float(np.abs(outputs['y'] - reference['y']).sum())\n"
        "neg_l1.max_drop = 0.5\n"
    )
    metric = user_metric(f"{path}:neg_l1", "y")
    ref = {"y": np.array([1.0, 2.0])}
    assert metric.score({"y": np.array([1.0, 3.0])}, ref, None) == pytest.approx(-1.0)
    assert metric.default_max_drop(ref, None, 0.0) == 0.5
    assert metric.higher_is_better


def test_user_metric_module_that_does_not_import() -> None:
    with pytest.raises(OptimizeError, match="does not import"):
        check_metric_name("edgeshift_no_such_module_xyz:f")


def test_user_metric_file_with_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(OptimizeError, match="does not import"):
        check_metric_name(f"{path}:f")


def test_user_metric_missing_function() -> None:
    with pytest.raises(OptimizeError, match="has no function 'nope'"):
        user_metric("math:nope", "y")


def test_user_metric_returning_nan_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nanmetric.py"
    path.write_text("def f(o, r, l):\n    return float('nan')\n")
    metric = user_metric(f"{path}:f", "y")
    with pytest.raises(OptimizeError, match="finite"):
        metric.score({"y": np.zeros(1)}, {"y": np.zeros(1)}, None)

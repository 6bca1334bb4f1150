"""The pure core: agreement figures against hand-computed values, and the tolerance policy."""

from __future__ import annotations

import numpy as np
import pytest

from edgeshift.verify.agreement import compare_output, is_class_scores
from edgeshift.verify.tolerance import FP32_RTOL, Tolerance, judge


def test_identical_outputs_agree_exactly() -> None:
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = compare_output("y", ref.copy(), ref)
    assert a.identical and a.max_abs_error == 0 and a.max_rel_error == 0
    assert a.top1_agreement_pct == 100.0 and a.cosine_min == pytest.approx(1.0)
    assert a.worst == ()


def test_errors_are_relative_to_the_output_range_and_name_the_worst_element() -> None:
    ref = np.array([[0.0, 10.0], [-20.0, 5.0]], dtype=np.float32)
    got = ref.copy()
    got[1, 1] += 0.5  # the worst: 0.5 / max|ref| 20 = 0.025
    got[0, 0] += 0.1  # next to a zero: elementwise relative error would be infinite
    a = compare_output("y", got, ref)
    assert a.max_abs_error == pytest.approx(0.5)
    assert a.max_rel_error == pytest.approx(0.025)
    assert a.rms_error == pytest.approx(np.sqrt((0.25 + 0.01) / 4), rel=1e-6)
    assert a.worst[0].index == (1, 1) and a.worst[0].reference == 5.0
    assert a.worst[0].got == pytest.approx(5.5)
    assert [w.index for w in a.worst] == [(1, 1), (0, 0)]  # zero differences are not listed


def test_top1_agreement_counts_argmax_flips() -> None:
    ref = np.eye(4, dtype=np.float32)  # sample i -> class i
    got = ref.copy()
    got[2] = [0, 0, 0.4, 0.6]  # one of four samples flips to class 3
    assert compare_output("logits", got, ref).top1_agreement_pct == 75.0


def test_nan_against_a_number_is_the_worst_disagreement() -> None:
    ref = np.ones((2, 3), dtype=np.float32)
    got = ref.copy()
    got[0, 1] = np.nan
    a = compare_output("y", got, ref)
    assert a.max_abs_error == np.inf and a.worst[0].index == (0, 1)


def test_class_scores_are_recognised_by_shape() -> None:
    assert is_class_scores(np.zeros((5, 10), np.float32))
    assert not is_class_scores(np.zeros((5, 1), np.float32))  # one score: nothing to argmax
    assert not is_class_scores(np.zeros((5, 4, 4), np.float32))  # a map, not classes
    assert not is_class_scores(np.zeros((5, 10), np.int64))


def _agreement(top1: float | None, cosine: float, rel: float = 0.0):  # type: ignore[no-untyped-def]
    base = compare_output("logits", np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
    return base.__class__(
        **{**base.__dict__, "top1_agreement_pct": top1, "cosine_mean": cosine, "max_rel_error": rel}
    )


def test_fp32_is_held_to_rtol_of_the_range() -> None:
    tol = Tolerance("fp32")
    assert judge(_agreement(100.0, 1.0, rel=FP32_RTOL), tol)[0]
    ok, why = judge(_agreement(100.0, 1.0, rel=2 * FP32_RTOL), tol)
    assert not ok and "0.0002 > 0.0001" in why


def test_quantized_is_held_to_its_own_budget() -> None:
    tol = Tolerance("int8", metric="top1", max_drop=1.0, metric_output="logits")
    assert judge(_agreement(99.0, 0.9), tol)[0]  # 1 point of the budget: exactly allowed
    ok, why = judge(_agreement(98.9, 1.0), tol)
    assert not ok and why == "top-1 98.90% < 99.00%"
    cos = Tolerance("bf16", metric="cosine", max_drop=0.01, metric_output="logits")
    assert judge(_agreement(None, 0.995), cos)[0] and not judge(_agreement(None, 0.989), cos)[0]


def test_quantized_without_a_budget_uses_the_default_goal() -> None:
    tol = Tolerance("int8")  # a quantized .onnx with no manifest
    assert judge(_agreement(99.5, 0.0), tol)[0] and not judge(_agreement(99.4, 1.0), tol)[0]
    assert judge(_agreement(None, 0.999), tol)[0] and not judge(_agreement(None, 0.998), tol)[0]

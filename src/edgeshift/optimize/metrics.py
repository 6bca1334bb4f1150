"""Accuracy metrics: how close a candidate's outputs are to the labels, or to the original's.

A metric scores the outputs of the whole held-out set at once. Without labels the target is
what the original fp32 model produced, so the original scores perfectly (100 points, cosine 1,
error 0) and the drop is the candidate's distance from it. The budget (``max_drop``) is in the
metric's own unit:

==========  =======================================  ====================  ================
metric      score                                    unit                  default budget
==========  =======================================  ====================  ================
top1        argmax accuracy (labels) or agreement    percentage points     1 point
cosine      mean cosine similarity per sample        cosine (-1..1)        0.01
rmse        root mean squared error                  the output's units    1% of target RMS
max-abs     largest absolute error                   the output's units    1% of max |target|
iou         IoU of thresholded / argmax maps         percentage points     1 point
==========  =======================================  ====================  ================

A user metric ``module:function`` (or ``path/to/file.py:function``) is called as
``function(outputs, reference, labels) -> float`` with dicts of arrays by output name;
higher is better unless the function has ``higher_is_better = False``; its budget defaults
to its ``max_drop`` attribute, else 1% of the original's score.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshift.errors import OptimizeError

BUILTIN_METRICS = ("top1", "cosine", "rmse", "max-abs", "iou")
_CLASSIFIER_HINTS = ("logit", "prob", "class", "score", "softmax", "label")

Outputs = Mapping[str, np.ndarray]
ScoreFn = Callable[[Outputs, Outputs, "np.ndarray | None"], float]


@dataclass(frozen=True)
class Metric:
    """A named score over the held-out outputs, its direction, unit and default budget."""

    name: str
    unit: str
    higher_is_better: bool
    score_fn: ScoreFn
    output: str  # the output it reads (user metrics see all of them)
    reason: str  # why this metric: given by the user, or what `auto` saw
    default_max_drop_fn: Callable[[Outputs, np.ndarray | None, float], float]

    def score(self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        value = float(self.score_fn(outputs, reference, labels))
        if not math.isfinite(value):
            raise OptimizeError(
                f"metric {self.name} returned {value} — it must return a finite float"
            )
        return value

    def drop(self, original: float, candidate: float) -> float:
        """How much worse the candidate is, in the metric's unit (negative: better)."""
        return original - candidate if self.higher_is_better else candidate - original

    def default_max_drop(
        self, reference: Outputs, labels: np.ndarray | None, original_score: float
    ) -> float:
        return float(self.default_max_drop_fn(reference, labels, original_score))


def _target(output: str, reference: Outputs, labels: np.ndarray | None) -> np.ndarray:
    return labels if labels is not None else reference[output]


def _top1(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        predicted = np.argmax(outputs[output].reshape(len(outputs[output]), -1), axis=-1)
        if labels is not None:
            wanted = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
        else:
            ref = reference[output]
            wanted = np.argmax(ref.reshape(len(ref), -1), axis=-1)
        return float(np.mean(predicted == wanted) * 100.0)

    return score


def _cosine(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        got = outputs[output].reshape(len(outputs[output]), -1).astype(np.float64)
        want = _target(output, reference, labels)
        want = want.reshape(len(want), -1).astype(np.float64)
        dot = np.sum(got * want, axis=1)
        got_norm, want_norm = np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1)
        cos = dot / np.maximum(got_norm * want_norm, 1e-300)
        # Two all-zero vectors agree perfectly; one zero vector against a non-zero one does not.
        cos = np.where((got_norm == 0) & (want_norm == 0), 1.0, cos)
        return float(np.mean(cos))

    return score


def _rmse(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        got = outputs[output].astype(np.float64)
        want = _target(output, reference, labels).astype(np.float64).reshape(got.shape)
        return float(np.sqrt(np.mean((got - want) ** 2)))

    return score


def _max_abs(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        got = outputs[output].astype(np.float64)
        want = _target(output, reference, labels).astype(np.float64).reshape(got.shape)
        return float(np.max(np.abs(got - want))) if got.size else 0.0

    return score


def _segment_map(values: np.ndarray, threshold: float) -> np.ndarray:
    """Class map per pixel: argmax over channels [N, C>1, ...], else a threshold."""
    if values.ndim >= 4 and values.shape[1] > 1:
        return np.argmax(values, axis=1)
    squeezed = values[:, 0] if values.ndim >= 4 else values
    return (squeezed > threshold).astype(np.int64)


def _iou(output: str, threshold: float) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        got = _segment_map(outputs[output], threshold)
        if labels is not None:
            want = labels.astype(np.int64).reshape(got.shape)
        else:
            want = _segment_map(reference[output], threshold)
        classes = np.unique(want)
        if got.max(initial=0) <= 1 and want.max(initial=0) <= 1:
            classes = np.array([1])  # binary maps: IoU of the foreground
        ious = []
        for c in classes:
            union = np.sum((got == c) | (want == c))
            inter = np.sum((got == c) & (want == c))
            ious.append(1.0 if union == 0 else inter / union)
        return float(np.mean(ious) * 100.0)

    return score


def _fixed(value: float) -> Callable[[Outputs, np.ndarray | None, float], float]:
    return lambda reference, labels, original: value


def _relative_rms(output: str) -> Callable[[Outputs, np.ndarray | None, float], float]:
    def budget(reference: Outputs, labels: np.ndarray | None, original: float) -> float:
        target = _target(output, reference, labels).astype(np.float64)
        return 0.01 * float(np.sqrt(np.mean(target**2))) if target.size else 0.0

    return budget


def _relative_max(output: str) -> Callable[[Outputs, np.ndarray | None, float], float]:
    def budget(reference: Outputs, labels: np.ndarray | None, original: float) -> float:
        target = _target(output, reference, labels).astype(np.float64)
        return 0.01 * float(np.max(np.abs(target))) if target.size else 0.0

    return budget


def builtin_metric(name: str, output: str, reason: str, reference: Outputs | None = None) -> Metric:
    """One of BUILTIN_METRICS reading OUTPUT."""
    if name == "top1":
        return Metric(name, "points", True, _top1(output), output, reason, _fixed(1.0))
    if name == "cosine":
        return Metric(name, "cosine", True, _cosine(output), output, reason, _fixed(0.01))
    if name == "rmse":
        return Metric(
            name, "output units", False, _rmse(output), output, reason, _relative_rms(output)
        )
    if name == "max-abs":
        return Metric(
            name, "output units", False, _max_abs(output), output, reason, _relative_max(output)
        )
    if name == "iou":
        ref = reference[output] if reference is not None else None
        in_unit = ref is not None and ref.size > 0 and ref.min() >= 0.0 and ref.max() <= 1.0
        # Probabilities threshold at 0.5; logits at 0 (the same decision after a sigmoid).
        threshold = 0.5 if in_unit else 0.0
        return Metric(name, "points", True, _iou(output, threshold), output, reason, _fixed(1.0))
    raise OptimizeError(
        f"unknown metric {name!r} — use auto, {', '.join(BUILTIN_METRICS)} or module:function"
    )


def auto_metric(reference: Outputs, output: str, labels: np.ndarray | None) -> Metric:
    """Pick a metric from the first output's shape (and the labels, if any); say why."""
    ref = reference[output]
    shape = list(ref.shape)
    if labels is not None and np.issubdtype(labels.dtype, np.integer):
        if ref.ndim == 2 and shape[1] > 1 and labels.ndim == 1:
            return builtin_metric("top1", output, f"integer labels, output {shape}: a classifier")
        if ref.ndim >= 3 and labels.ndim >= 2:
            return builtin_metric(
                "iou", output, f"integer label maps, output {shape}: segmentation", reference
            )
    if labels is not None:
        return builtin_metric("rmse", output, f"float labels, output {shape}: regression")
    if ref.ndim == 2 and shape[1] > 1:
        norms = np.linalg.norm(ref.astype(np.float64), axis=1)
        if np.allclose(norms, 1.0, atol=1e-3):
            return builtin_metric(
                "cosine", output, f"output {shape} has unit-norm rows: an embedding"
            )
        rows_are_probs = bool(np.all(ref >= 0) and np.allclose(ref.sum(axis=1), 1.0, atol=1e-3))
        if rows_are_probs or any(h in output.lower() for h in _CLASSIFIER_HINTS):
            return builtin_metric(
                "top1", output, f"output {shape} looks like class scores: agreement"
            )
        return builtin_metric(
            "cosine", output, f"output {shape}: vectors (pass --metric top1 for a classifier)"
        )
    if ref.ndim == 3:
        return builtin_metric("cosine", output, f"output {shape}: per-token vectors")
    if ref.ndim >= 4:
        return builtin_metric(
            "iou", output, f"output {shape}: a dense map (segmentation)", reference
        )
    return builtin_metric("rmse", output, f"output {shape}: scalars per sample (regression)")


def _import_user_module(module_spec: str, text: str) -> object:
    if module_spec.endswith(".py"):
        path = Path(module_spec)
        if not path.is_file():
            raise OptimizeError(f"--metric {text}: file {path} not found — check the path")
        spec = importlib.util.spec_from_file_location(f"edgeshift_user_metric_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise OptimizeError(f"--metric {text}: cannot import {path} — is it a Python file?")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise OptimizeError(
                f"--metric {text}: {path} does not import ({type(exc).__name__}: {exc}) — fix it"
            ) from exc
        return module
    try:
        return importlib.import_module(module_spec)
    except Exception as exc:
        raise OptimizeError(
            f"--metric {text}: module {module_spec!r} does not import "
            f"({type(exc).__name__}: {exc}) — put it on PYTHONPATH or pass path/to/file.py:function"
        ) from exc


def user_metric(text: str, output: str) -> Metric:
    """Load ``module:function`` (or ``file.py:function``) as a metric."""
    module_spec, sep, func_name = text.rpartition(":")
    if not sep or not module_spec or not func_name:
        raise OptimizeError(f"--metric {text!r} is not module:function — e.g. mymetrics:f1")
    module = _import_user_module(module_spec, text)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise OptimizeError(f"--metric {text}: {module_spec} has no function {func_name!r}")
    higher = bool(getattr(func, "higher_is_better", True))
    declared = getattr(func, "max_drop", None)

    def budget(reference: Outputs, labels: np.ndarray | None, original: float) -> float:
        return float(declared) if declared is not None else 0.01 * abs(original)

    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        try:
            return float(func(dict(outputs), dict(reference), labels))
        except Exception as exc:
            raise OptimizeError(
                f"--metric {text} failed: {type(exc).__name__}: {exc} — it is called as "
                "f(outputs, reference, labels) with dicts of arrays and returns a float"
            ) from exc

    return Metric(text, "user", higher, score, output, "given by --metric", budget)


def resolve_metric(name: str, reference: Outputs, output: str, labels: np.ndarray | None) -> Metric:
    """The metric for NAME: ``auto``, a builtin, or ``module:function``."""
    if name == "auto":
        return auto_metric(reference, output, labels)
    if name in BUILTIN_METRICS:
        return builtin_metric(name, output, "given by --metric", reference)
    if ":" in name:
        return user_metric(name, output)
    raise OptimizeError(
        f"unknown metric {name!r} — use auto, {', '.join(BUILTIN_METRICS)} or module:function"
    )


def check_metric_name(name: str) -> None:
    """Fail early (before any model runs) on a metric that cannot resolve."""
    if name == "auto" or name in BUILTIN_METRICS:
        return
    if ":" in name:
        user_metric(name, output="")
        return
    raise OptimizeError(
        f"unknown metric {name!r} — use auto, {', '.join(BUILTIN_METRICS)} or module:function"
    )

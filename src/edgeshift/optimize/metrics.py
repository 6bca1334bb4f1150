"""Accuracy metrics: how close a candidate's outputs are to the labels, or to the original's.

A metric scores the outputs of the whole held-out set at once. Without labels the target is
what the original fp32 model produced, so the original scores perfectly (100 points, cosine 1,
error 0) and the drop is the candidate's distance from it. The budget (``max_drop``) is in the
metric's own unit:

==========  =======================================  ====================  ================
metric      score                                    unit                  default budget
==========  =======================================  ====================  ================
top1        argmax accuracy (labels) or agreement,   percentage points     1 point
            per position
sequence    greedy CTC decode: exact-match lines     percentage points     1 point
            (``sequence:cer``: character error rate)
cosine      mean cosine similarity per row / token   cosine (-1..1)        0.01
rmse        root mean squared error                  the output's units    1% of target RMS
max-abs     largest absolute error                   the output's units    1% of max |target|
iou         IoU of thresholded / argmax maps         percentage points     1 point
==========  =======================================  ====================  ================

Layouts: the class axis of ``[N, C]`` and of a sequence ``[N, T, C]`` is the last one; of a
map ``[N, C, H, W]`` (rank 4 and up) it is axis 1. ``top1`` scores every position.

Without labels every output is scored, and the verdict is the worst output's: a candidate
that breaks one head is broken whatever the others do, which a mean would hide. When the
outputs need different metrics (or rmse / max-abs, whose units differ per output), each
output's drop is taken as a fraction of its own default budget and the worst fraction is the
drop (unit ``budget fraction``, default budget 1). Labels belong to one output (the first):
with labels only that output is scored.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeshift.errors import DataError, OptimizeError
from edgeshift.optimize.sequence import (
    parse_sequence_options,
    sequence_scores,
)

BUILTIN_METRICS = ("top1", "sequence", "cosine", "rmse", "max-abs", "iou")
_CLASSIFIER_HINTS = ("logit", "prob", "class", "score", "softmax", "label", "ctc")
# A class that wins at least this share of positions is taken for a CTC blank: recognizers
# emit blank between and around characters, far more often than any character.
_BLANK_SHARE = 0.4
_MIN_BUDGET = 1e-12  # keeps a drop / budget ratio finite when a target is all zeros

Outputs = Mapping[str, np.ndarray]
ScoreFn = Callable[[Outputs, Outputs, "np.ndarray | None"], float]
BudgetFn = Callable[[Outputs, "np.ndarray | None", float], float]


@dataclass(frozen=True)
class Metric:
    """A named score over the held-out outputs, its direction, unit and default budget."""

    name: str
    unit: str
    higher_is_better: bool
    score_fn: ScoreFn
    output: str  # the output(s) it reads, comma-separated (user metrics see all of them)
    reason: str  # why this metric: given by the user, or what `auto` saw
    default_max_drop_fn: BudgetFn

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


# --- layouts -------------------------------------------------------------------------------


def class_axis(ndim: int) -> int:
    """The class axis: last of ``[N, C]`` and of a sequence ``[N, T, C]``; 1 of a map
    ``[N, C, H, W]`` (rank 4 and up)."""
    return 1 if ndim >= 4 else ndim - 1


def class_map(values: np.ndarray) -> np.ndarray:
    """The argmax class at every position: ``[N]``, ``[N, T]`` or ``[N, H, W]``."""
    return np.argmax(values, axis=class_axis(values.ndim))


def _labels_per_position(labels: np.ndarray, positions: tuple[int, ...]) -> np.ndarray:
    if labels.shape == positions:
        return labels
    if labels.size == math.prod(positions):
        return labels.reshape(positions)
    raise DataError(
        f"labels of shape {list(labels.shape)} do not match the output's {list(positions)} "
        "positions — give one class per position (negative values are ignored)"
    )


def _target(output: str, reference: Outputs, labels: np.ndarray | None) -> np.ndarray:
    return labels if labels is not None else reference[output]


# --- top1 ----------------------------------------------------------------------------------


def _top1(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        predicted = class_map(outputs[output])
        if labels is None:
            wanted = class_map(reference[output])
            return float(np.mean(predicted == wanted) * 100.0)
        wanted = _labels_per_position(labels, predicted.shape)
        # Negative labels mark padding (the -100 of token-classification datasets).
        scored = wanted >= 0
        if not scored.any():
            return 100.0
        return float(np.mean(predicted[scored] == wanted[scored]) * 100.0)

    return score


# --- sequence (CTC) ------------------------------------------------------------------------


def _sequence(output: str, blank: int | str, cer: bool) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        exact, error_rate = sequence_scores(outputs[output], reference.get(output), labels, blank)
        return error_rate if cer else exact

    return score


# --- cosine, rmse, max-abs, iou ------------------------------------------------------------


def _cosine_rows(values: np.ndarray) -> np.ndarray:
    # [N, T, D]: one vector per token; anything else: one vector per sample.
    if values.ndim == 3:
        return values.reshape(-1, values.shape[-1]).astype(np.float64)
    return values.reshape(len(values), -1).astype(np.float64)


def _cosine(output: str) -> ScoreFn:
    def score(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        got = _cosine_rows(outputs[output])
        want = _cosine_rows(_target(output, reference, labels).reshape(outputs[output].shape))
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
        return class_map(values)
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


def _fixed(value: float) -> BudgetFn:
    return lambda reference, labels, original: value


def _relative_rms(output: str) -> BudgetFn:
    def budget(reference: Outputs, labels: np.ndarray | None, original: float) -> float:
        target = _target(output, reference, labels).astype(np.float64)
        return 0.01 * float(np.sqrt(np.mean(target**2))) if target.size else 0.0

    return budget


def _relative_max(output: str) -> BudgetFn:
    def budget(reference: Outputs, labels: np.ndarray | None, original: float) -> float:
        target = _target(output, reference, labels).astype(np.float64)
        return 0.01 * float(np.max(np.abs(target))) if target.size else 0.0

    return budget


# --- building, combining and choosing --------------------------------------------------------


def builtin_metric(name: str, output: str, reason: str, reference: Outputs | None = None) -> Metric:
    """One of BUILTIN_METRICS reading OUTPUT; ``sequence`` takes ``:blank=N|last,cer``."""
    if name.partition(":")[0] == "sequence":
        blank, cer = parse_sequence_options(name)
        unit = "CER points" if cer else "exact-match points"
        score = _sequence(output, blank, cer)
        return Metric(name, unit, not cer, score, output, reason, _fixed(1.0))
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


def _misfit(name: str, values: np.ndarray) -> str | None:
    """Why metric NAME cannot read VALUES, or None when it can."""
    base = name.partition(":")[0]
    if base == "top1" and (values.ndim < 2 or values.shape[class_axis(values.ndim)] < 2):
        return "top1 reads class scores [N, C], [N, T, C] or [N, C, H, W]"
    if base == "sequence" and (values.ndim != 3 or values.shape[-1] < 2):
        return "sequence reads per-step class scores [N, T, C]"
    if base == "iou" and values.ndim < 3:
        return "iou reads maps [N, H, W] or [N, C, H, W]"
    if base == "cosine" and values.ndim < 2:
        return "cosine reads vectors [N, D] or [N, T, D]"
    return None


def combine(parts: list[Metric], reason: str) -> Metric:
    """Several single-output metrics as one: the worst output decides (see the module doc)."""
    if len(parts) == 1:
        return replace(parts[0], reason=reason)
    outputs = ", ".join(p.output for p in parts)
    names = list(dict.fromkeys(p.name for p in parts))
    if len(names) == 1 and parts[0].unit != "output units":
        pick = min if parts[0].higher_is_better else max

        def worst_score(got: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
            return pick(p.score(got, reference, labels) for p in parts)

        return replace(parts[0], score_fn=worst_score, output=outputs, reason=reason)

    def worst_fraction(got: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        fractions = []
        for p in parts:
            original = p.score(reference, reference, labels)
            budget = max(p.default_max_drop(reference, labels, original), _MIN_BUDGET)
            fractions.append(p.drop(original, p.score(got, reference, labels)) / budget)
        return -max(fractions)  # higher is better: 0 for the original, -1 at the budget

    name = "+".join(names)
    return Metric(name, "budget fraction", True, worst_fraction, outputs, reason, _fixed(1.0))


def _looks_like_scores(name: str, values: np.ndarray) -> bool:
    v = values.astype(np.float64)
    probs = bool(np.all(v >= 0) and np.allclose(v.sum(axis=-1), 1.0, atol=1e-3))
    log_probs = bool(np.all(v <= 0) and np.allclose(np.exp(v).sum(axis=-1), 1.0, atol=1e-3))
    return probs or log_probs or any(h in name.lower() for h in _CLASSIFIER_HINTS)


def _ctc_blank(values: np.ndarray, min_share: float) -> tuple[int | str, float] | None:
    """The CTC blank (0 or "last") when one of them is the argmax at >= MIN_SHARE of steps."""
    best = np.argmax(values, axis=-1)
    shares: dict[int | str, float] = {
        0: float(np.mean(best == 0)),
        "last": float(np.mean(best == values.shape[-1] - 1)),
    }
    blank, share = max(shares.items(), key=lambda item: item[1])
    return (blank, share) if share >= min_share else None


def _sequence_choice(
    desc: str, values: np.ndarray, blank: tuple[int | str, float]
) -> tuple[str, str]:
    index, share = blank
    name = "sequence" if index == 0 else "sequence:blank=last"
    classes = values.shape[-1]
    cls = 0 if index == 0 else classes - 1
    return name, (
        f"3-D output {desc} [N, T, C] with C={classes} classes, class {cls} the argmax at "
        f"{share:.0%} of steps (a CTC blank): sequence (CTC greedy, blank {cls}) — "
        "pass --metric top1 to score positions"
    )


def _auto_one(output: str, values: np.ndarray, labels: np.ndarray | None) -> tuple[str, str]:
    """(metric name, why) for one output."""
    desc = f"{output} {list(values.shape)}"
    if labels is not None and np.issubdtype(labels.dtype, np.integer):
        if values.ndim == 2 and values.shape[1] > 1 and labels.ndim == 1:
            return "top1", f"integer labels, output {desc}: a classifier"
        if values.ndim == 3 and labels.ndim == 2:
            blank = _ctc_blank(values, _BLANK_SHARE)
            if blank is not None or labels.shape[1] != values.shape[1]:
                return _sequence_choice(desc, values, blank or (0, 0.0))
            return "top1", f"integer labels per step, output {desc}: top1 per position (tokens)"
        if values.ndim >= 3 and labels.ndim >= 2:
            return "iou", f"integer label maps, output {desc}: segmentation"
    if labels is not None:
        return "rmse", f"float labels, output {desc}: regression"
    if values.ndim <= 1 or values.size == len(values):
        return "rmse", f"output {desc}: one value per sample (regression)"
    if values.ndim == 2:
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        if np.allclose(norms, 1.0, atol=1e-3):
            return "cosine", f"output {desc} has unit-norm rows: an embedding (cosine per row)"
        if _looks_like_scores(output, values):
            return "top1", f"output {desc} looks like class scores: agreement"
        return "cosine", f"output {desc}: vectors (pass --metric top1 for a classifier)"
    if values.ndim == 3:
        scores = _looks_like_scores(output, values)
        # Raw hidden states rarely peak on their first or last unit; ask more of them.
        blank = _ctc_blank(values, _BLANK_SHARE if scores else 0.5)
        if blank is not None:
            return _sequence_choice(desc, values, blank)
        if scores:
            return "top1", (
                f"3-D output {desc} [N, T, C] of class scores, no CTC blank: top1 per position "
                "— pass --metric sequence for a CTC recognizer"
            )
        return "cosine", (
            f"3-D output {desc} [N, T, D]: vectors, cosine per token — pass --metric top1 "
            "for class scores"
        )
    return "iou", f"output {desc}: a dense map [N, C, H, W] (segmentation, classes on axis 1)"


def auto_metric(reference: Outputs, output: str, labels: np.ndarray | None) -> Metric:
    """Pick a metric from the outputs' layouts (with labels: OUTPUT's and the labels'); say
    why. Without labels every output is scored."""
    if labels is not None:
        choice, why = _auto_one(output, reference[output], labels)
        return builtin_metric(choice, output, why, reference)
    choices = [(name, *_auto_one(name, values, None)) for name, values in reference.items()]
    parts = [builtin_metric(choice, name, why, reference) for name, choice, why in choices]
    if len(parts) == 1:
        return parts[0]
    same = len({choice for _, choice, _ in choices}) == 1 and parts[0].unit != "output units"
    how = "the worst output's score" if same else "the worst drop as a fraction of its budget"
    whys = "; ".join(why for _, _, why in choices)
    return combine(parts, f"{whys} — {len(parts)} outputs scored together: {how}")


def _explicit_metric(
    name: str, reference: Outputs, output: str, labels: np.ndarray | None
) -> Metric:
    if labels is not None:
        return builtin_metric(name, output, "given by --metric", reference)
    misfits = {o: _misfit(name, v) for o, v in reference.items()}
    fitting = [o for o, why in misfits.items() if why is None]
    if not fitting:
        shapes = ", ".join(f"{o} {list(v.shape)}" for o, v in reference.items())
        why = next(w for w in misfits.values() if w)
        raise OptimizeError(
            f"--metric {name} fits no output ({shapes}): {why} — pass --metric auto"
        )
    skipped = [f"{o} ({why})" for o, why in misfits.items() if why is not None]
    reason = "given by --metric" + (f"; not scored: {', '.join(skipped)}" if skipped else "")
    if len(fitting) > 1:
        reason += f"; {len(fitting)} outputs scored together, the worst decides"
    return combine([builtin_metric(name, o, reason, reference) for o in fitting], reason)


def _is_builtin(name: str) -> bool:
    return name in BUILTIN_METRICS or name.startswith("sequence:")


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
    """The metric for NAME: ``auto``, a builtin, or ``module:function``. REFERENCE holds every
    output of the original; OUTPUT is the one LABELS belong to (the first). Without labels
    every output is scored together."""
    if name == "auto":
        return auto_metric(reference, output, labels)
    if _is_builtin(name):
        return _explicit_metric(name, reference, output, labels)
    if ":" in name:
        return user_metric(name, ", ".join(reference))
    raise OptimizeError(
        f"unknown metric {name!r} — use auto, {', '.join(BUILTIN_METRICS)} or module:function"
    )


def check_metric_name(name: str) -> None:
    """Fail early (before any model runs) on a metric that cannot resolve."""
    if name == "auto" or name in BUILTIN_METRICS:
        return
    if name.startswith("sequence:"):
        parse_sequence_options(name)
        return
    if ":" in name:
        user_metric(name, output="")
        return
    raise OptimizeError(
        f"unknown metric {name!r} — use auto, {', '.join(BUILTIN_METRICS)} or module:function"
    )

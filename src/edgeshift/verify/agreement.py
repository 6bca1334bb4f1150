"""How closely one architecture's outputs agree with the x86 reference (pure numpy).

Every figure compares the same artifact run on two CPUs over the same inputs, so the x86
outputs are the target and there are no labels: top-1 is agreement of argmax, not accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Elements listed when an output fails: enough to see a pattern, short enough for a terminal.
WORST_ELEMENTS = 5


@dataclass(frozen=True)
class WorstElement:
    """One element where the two architectures differ most."""

    index: tuple[int, ...]
    reference: float
    got: float

    @property
    def abs_error(self) -> float:
        return abs(self.got - self.reference)


@dataclass(frozen=True)
class OutputAgreement:
    """Agreement of one output over all samples.

    ``max_rel_error`` is the largest absolute difference divided by the reference's largest
    magnitude: elementwise relative error is meaningless next to zeros (ReLU outputs, logits
    that cross zero), while the output's own range is the scale a user reads it in.
    ``top1_agreement_pct`` is None for outputs that are not per-sample class scores.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    rms_error: float
    cosine_min: float
    cosine_mean: float
    top1_agreement_pct: float | None
    worst: tuple[WorstElement, ...]
    identical: bool


def _per_sample(values: np.ndarray) -> np.ndarray:
    flat = (
        values.astype(np.float64).reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
    )
    return flat


def _cosines(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    g, r = _per_sample(got), _per_sample(reference)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    dots = np.sum(g * r, axis=1)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    both_zero = (np.linalg.norm(g, axis=1) == 0) & (np.linalg.norm(r, axis=1) == 0)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(both_zero, 1.0, np.where(norms > 0, dots / safe, 0.0))


def is_class_scores(reference: np.ndarray) -> bool:
    """Per-sample scores over classes: (samples, classes) or (samples, 1, classes)."""
    if reference.ndim < 2 or not np.issubdtype(reference.dtype, np.floating):
        return False
    per_sample = reference.reshape(len(reference), -1)
    return per_sample.shape[1] > 1 and reference.shape[-1] == per_sample.shape[1]


def top1_agreement_pct(got: np.ndarray, reference: np.ndarray) -> float:
    g = np.argmax(got.reshape(len(got), -1), axis=1)
    r = np.argmax(reference.reshape(len(reference), -1), axis=1)
    return float(np.mean(g == r) * 100.0)


def compare_output(name: str, got: np.ndarray, reference: np.ndarray) -> OutputAgreement:
    """Agreement figures of GOT against REFERENCE for one output (same shape and dtype)."""
    if got.shape != reference.shape:
        raise ValueError(f"output {name!r}: shape {got.shape} != reference {reference.shape}")
    g64, r64 = got.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(g64 - r64)
    # NaN where the other side has a number is the worst disagreement there is.
    diff = np.where(np.isnan(g64) != np.isnan(r64), np.inf, np.nan_to_num(diff, nan=0.0))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.nanmax(np.abs(r64))) if r64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    cos = _cosines(got, reference) if got.size else np.ones(1)
    order = np.argsort(diff, axis=None)[::-1][:WORST_ELEMENTS]
    worst = tuple(
        WorstElement(
            tuple(int(i) for i in np.unravel_index(int(k), diff.shape)),
            float(r64.flat[k]),
            float(g64.flat[k]),
        )
        for k in order
        if diff.flat[k] > 0
    )
    return OutputAgreement(
        name=name,
        shape=tuple(int(d) for d in got.shape),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        rms_error=float(np.sqrt(np.mean(np.square(np.where(np.isinf(diff), 0.0, diff)))))
        if diff.size
        else 0.0,
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        top1_agreement_pct=top1_agreement_pct(got, reference)
        if is_class_scores(reference)
        else None,
        worst=worst,
        identical=bool(np.array_equal(got, reference, equal_nan=True)),
    )

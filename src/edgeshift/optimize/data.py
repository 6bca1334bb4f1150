"""The user's eval set: npz loading, matching to the model's inputs, and the deterministic split
into a calibration part (quantizers see it) and a held-out evaluation part (metrics see it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshift.bench.inputs import load_npz, match_inputs
from edgeshift.errors import DataError
from edgeshift.model.shapes import TensorSpec

DEFAULT_LABELS_KEY = "labels"
MIN_CALIBRATION_SAMPLES = 2
MIN_EVAL_SAMPLES = 2
CALIBRATION_FRACTION = 0.25


@dataclass
class EvalData:
    """Arrays per model input (first axis = samples) and optional labels of the same length."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    labels_key: str | None
    source: str

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, indices: np.ndarray) -> EvalData:
        labels = self.labels[indices] if self.labels is not None else None
        inputs = {k: v[indices] for k, v in self.inputs.items()}
        return EvalData(inputs, labels, self.labels_key, self.source)

    def batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive feed dicts of ``batch`` samples; the last one may be shorter."""
        for start in range(0, self.samples, batch):
            yield {k: v[start : start + batch] for k, v in self.inputs.items()}


def match_eval_data(
    arrays: dict[str, np.ndarray],
    inputs: list[TensorSpec],
    labels_key: str | None = None,
    source: str = "eval data",
) -> EvalData:
    """Check ARRAYS against the model's inputs and pick out the labels.

    Labels come from ``labels_key``, or from an array named ``labels`` that is no input.
    """
    input_names = {i.name for i in inputs}
    if labels_key is not None and labels_key not in arrays:
        raise DataError(
            f"{source} has no array {labels_key!r} for --labels — it has "
            f"{', '.join(arrays) or 'none'}"
        )
    if labels_key is not None and labels_key in input_names:
        raise DataError(f"--labels {labels_key!r} names a model input — name the labels array")
    if (
        labels_key is None
        and DEFAULT_LABELS_KEY in arrays
        and DEFAULT_LABELS_KEY not in input_names
    ):
        labels_key = DEFAULT_LABELS_KEY
    samples = match_inputs(arrays, inputs, source)
    labels = arrays[labels_key] if labels_key is not None else None
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != samples):
        got = labels.shape[0] if labels.ndim else "a scalar"
        raise DataError(
            f"{source}: labels {labels_key!r} have {got} rows but the inputs have {samples} "
            "samples — one label per sample"
        )
    return EvalData({i.name: arrays[i.name] for i in inputs}, labels, labels_key, source)


def load_eval_data(
    path: str | Path, inputs: list[TensorSpec], labels_key: str | None = None
) -> EvalData:
    """Read an .npz eval set and match it to the model's inputs."""
    return match_eval_data(load_npz(path), inputs, labels_key, str(path))


def split_indices(
    samples: int,
    seed: int,
    max_calibration: int | None = None,
    max_eval: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, evaluation) sample indices, the same for the same seed.

    A quarter of the samples (at least MIN_CALIBRATION_SAMPLES, at most ``max_calibration``)
    calibrate; the rest (at most ``max_eval``) evaluate. Both are sorted.
    """
    needed = MIN_CALIBRATION_SAMPLES + MIN_EVAL_SAMPLES
    if samples < needed:
        raise DataError(
            f"the eval data has {samples} sample(s); optimize needs at least {needed} "
            f"({MIN_CALIBRATION_SAMPLES} to calibrate, {MIN_EVAL_SAMPLES} held out) — "
            "add samples (a few hundred give a trustworthy accuracy)"
        )
    order = np.random.default_rng(seed).permutation(samples)
    n_calib = max(MIN_CALIBRATION_SAMPLES, round(samples * CALIBRATION_FRACTION))
    if max_calibration is not None:
        n_calib = max(MIN_CALIBRATION_SAMPLES, min(n_calib, max_calibration))
    calibration = order[:n_calib]
    evaluation = order[n_calib:]
    if max_eval is not None:
        evaluation = evaluation[: max(MIN_EVAL_SAMPLES, max_eval)]
    return np.sort(calibration), np.sort(evaluation)


def fixed_batch(inputs: list[TensorSpec]) -> int | None:
    """The batch size the model fixes on its first axis, if any input fixes one."""
    for spec in inputs:
        if spec.shape and isinstance(spec.shape[0], int):
            return spec.shape[0]
    return None

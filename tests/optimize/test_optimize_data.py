"""Eval data: matching to the model's inputs, labels, and the deterministic split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeshift.errors import DataError
from edgeshift.model.shapes import TensorSpec
from edgeshift.optimize.data import load_eval_data, match_eval_data, split_indices

INPUTS = [TensorSpec("x", "float32", ("batch", 4))]


def test_split_is_disjoint_deterministic_and_sized() -> None:
    calib, held = split_indices(100, seed=3)
    assert len(calib) == 25 and len(held) == 75
    assert not set(calib) & set(held)
    assert sorted(set(calib) | set(held)) == list(range(100))
    again = split_indices(100, seed=3)
    np.testing.assert_array_equal(calib, again[0])
    other = split_indices(100, seed=4)
    assert not np.array_equal(calib, other[0])


def test_split_caps() -> None:
    calib, held = split_indices(1000, seed=0, max_calibration=16, max_eval=64)
    assert len(calib) == 16 and len(held) == 64
    assert not set(calib) & set(held)


def test_too_few_samples_to_split() -> None:
    with pytest.raises(DataError, match="3 sample"):
        split_indices(3, seed=0)
    calib, held = split_indices(4, seed=0)
    assert len(calib) == 2 and len(held) == 2


def test_labels_found_by_default_and_by_key() -> None:
    arrays = {"x": np.zeros((5, 4), np.float32), "labels": np.arange(5), "y": np.ones(5)}
    assert match_eval_data(arrays, INPUTS).labels_key == "labels"
    assert match_eval_data(arrays, INPUTS, "y").labels_key == "y"
    assert match_eval_data({"x": arrays["x"]}, INPUTS).labels is None


@pytest.mark.parametrize(
    ("arrays", "labels", "message"),
    [
        ({"inp": np.zeros((5, 4), np.float32)}, None, "no array 'x'"),
        ({"x": np.zeros((5, 4), np.float64)}, None, "float64, the model wants float32"),
        ({"x": np.zeros((5, 3), np.float32)}, None, "axis 1 must be 4"),
        ({"x": np.zeros((5, 4, 1), np.float32)}, None, "has shape"),
        ({"x": np.zeros((5, 4), np.float32)}, "lab", "no array 'lab' for --labels"),
        ({"x": np.zeros((5, 4), np.float32), "labels": np.arange(4)}, None, "4 rows"),
    ],
)
def test_mismatched_data_is_refused(arrays: dict, labels: str | None, message: str) -> None:
    with pytest.raises(DataError, match=message):
        match_eval_data(arrays, INPUTS, labels)


def test_load_eval_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_eval_data(tmp_path / "missing.npz", INPUTS)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_eval_data(bad, INPUTS)

from __future__ import annotations

import pytest

from edgeshift.errors import ShapeError
from edgeshift.model.shapes import (
    DEFAULT_DYNAMIC_DIM,
    TensorSpec,
    parse_shape_overrides,
    resolve_input_shapes,
)

IDS = TensorSpec("input_ids", "int64", ("batch", "seq"))
IMG = TensorSpec("image", "float32", (None, 3, "h", "w"))


def test_parse_both_separators() -> None:
    assert parse_shape_overrides(["image=1x3x32x32", "seq=64", "a=2,5"]) == {
        "image": (1, 3, 32, 32),
        "seq": (64,),
        "a": (2, 5),
    }


@pytest.mark.parametrize("bad", ["image", "=1x2", "image=", "image=1xx2", "image=a", "image=0x3"])
def test_parse_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(ShapeError, match="--shape"):
        parse_shape_overrides([bad])


def test_defaults_batch_one_and_default_dim() -> None:
    r = resolve_input_shapes([IDS])
    assert r.shapes == {"input_ids": (1, DEFAULT_DYNAMIC_DIM)}
    assert len(r.assumed) == 2


def test_symbolic_dim_override_and_batch() -> None:
    r = resolve_input_shapes([IDS], {"seq": (32,)}, batch=4)
    assert r.shapes == {"input_ids": (4, 32)}
    assert r.assumed == []


def test_input_override_with_batch() -> None:
    r = resolve_input_shapes([IMG], {"image": (1, 3, 16, 20)}, batch=8)
    assert r.shapes == {"image": (8, 3, 16, 20)}


def test_unknown_name_suggests_nearest() -> None:
    with pytest.raises(ShapeError, match="did you mean 'input_ids'"):
        resolve_input_shapes([IDS], {"input_id": (1, 2)})


def test_rank_mismatch() -> None:
    with pytest.raises(ShapeError, match="rank 4"):
        resolve_input_shapes([IMG], {"image": (1, 3, 16)})


def test_conflict_with_fixed_dim() -> None:
    with pytest.raises(ShapeError, match="fixed at 3"):
        resolve_input_shapes([IMG], {"image": (1, 4, 16, 16)})


def test_symbolic_override_needs_one_int() -> None:
    with pytest.raises(ShapeError, match="one integer"):
        resolve_input_shapes([IDS], {"seq": (1, 2)})


def test_unknown_rank_needs_override() -> None:
    with pytest.raises(ShapeError, match="unknown rank"):
        resolve_input_shapes([TensorSpec("x", "float32", None)])

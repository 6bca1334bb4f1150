"""A memory budget splits large calls into row chunks: same outputs, bounded activations."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from edgeshift import zoo
from edgeshift.errors import BackendError
from edgeshift.runtime import Backend, open_backend
from edgeshift.runtime.base import activation_ratio as model_activation_ratio
from edgeshift.runtime.base import chunk_rows

KIB = 1 << 10


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo.get("digits-cnn", tmp_path_factory.mktemp("zoo")).model_path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).random((1000, 1, 8, 8), dtype=np.float32)


def _record_calls(backend: Backend) -> list[int]:
    """Rows of every runtime call BACKEND makes from now on."""
    calls: list[int] = []
    inner = backend._run

    def spy(feeds, names, *rest):  # type: ignore[no-untyped-def]
        calls.append(next(iter(feeds.values())).shape[0])
        return inner(feeds, names, *rest)

    backend._run = spy  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_chunked_outputs_equal_one_call(digits_cnn: Path, images: np.ndarray, backend: str) -> None:
    whole = open_backend(digits_cnn, backend, threads=1)
    chunked = open_backend(digits_cnn, backend, threads=1, options={"memory_budget_bytes": 2 << 20})
    calls = _record_calls(chunked)
    (name,) = [i.name for i in whole.inputs]
    expected = whole.run({name: images})
    got = chunked.run({name: images})
    # 2 MiB at the CNN's 16 KiB of activations a row: 128-row chunks, the last one short.
    assert calls == [128] * 7 + [104]
    assert got.keys() == expected.keys()
    for out, value in got.items():
        assert value.shape == expected[out].shape and value.dtype == expected[out].dtype
        # Rows are independent in this CNN: equal bit for bit on the machines we measured
        # (both runtimes). Kernels elsewhere may block 128 rows differently from 1,000 and
        # reorder fp32 sums: allow a few ulps of the largest logits (~36: ulp 3.8e-6).
        np.testing.assert_allclose(value, expected[out], rtol=1e-6, atol=1e-5)


def test_the_budget_sets_the_chunk_size(digits_cnn: Path, images: np.ndarray) -> None:
    sizes = {}
    for budget_kib in (512, 2048):
        rt = open_backend(digits_cnn, threads=1, options={"memory_budget_bytes": budget_kib * KIB})
        calls = _record_calls(rt)
        rt.run({"input": images})
        sizes[budget_kib] = max(calls)
    assert sizes == {512: 32, 2048: 128}  # budget / (64 activation bytes per input byte * 256)


def test_calls_within_the_budget_run_whole(digits_cnn: Path, images: np.ndarray) -> None:
    rt = open_backend(digits_cnn, threads=1, options={"memory_budget_bytes": 64 << 20})
    calls = _record_calls(rt)
    rt.run({"input": images[:32]})
    rt.run({"input": images})
    assert calls == [32, 1000]


def test_no_budget_never_chunks(digits_cnn: Path, images: np.ndarray) -> None:
    rt = open_backend(digits_cnn, threads=1)
    calls = _record_calls(rt)
    rt.run({"input": images})
    assert rt.memory_budget_bytes is None and calls == [1000]


def test_activation_ratio_comes_from_the_memory_plan(digits_cnn: Path) -> None:
    # Batch 1: a 256-byte image, 16 KiB of activations live at the peak (conv16 and conv32).
    assert model_activation_ratio(digits_cnn) == 64.0


def test_chunk_rows_is_pure_arithmetic() -> None:
    x = np.zeros((100, 4), np.float32)  # 16 bytes a row
    assert chunk_rows({"x": x}, 2.0, 100 * 16 * 2) is None  # fits exactly
    assert chunk_rows({"x": x}, 2.0, 100 * 16) == 50
    assert chunk_rows({"x": x}, 2.0, 1) == 1  # never zero rows
    assert chunk_rows({"x": x[:1]}, 1e9, 1) is None  # one row cannot be split
    assert chunk_rows({"x": x, "y": x[:50]}, 2.0, 1) is None  # no common row axis
    assert chunk_rows({"x": np.float32(1.0).reshape(())}, 2.0, 1) is None


def test_a_fixed_batch_model_is_never_split(tmp_path: Path) -> None:
    from tests.serve.serve_models import save_fixed

    rt = open_backend(save_fixed(tmp_path / "fixed.onnx"), options={"memory_budget_bytes": 1})
    assert rt.row_axis is False
    out = rt.run({"x": np.ones((1, 4), np.float32)})["y"]
    np.testing.assert_array_equal(out, np.full((1, 4), 2.0, np.float32))


def test_a_budget_below_one_byte_is_refused(digits_cnn: Path) -> None:
    with pytest.raises(BackendError, match="memory_budget_bytes must be >= 1"):
        open_backend(digits_cnn, options={"memory_budget_bytes": 0})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("budget", [None, 8 << 20], ids=["no-budget", "budget"])
def test_a_call_on_a_view_does_not_keep_its_base_alive(
    digits_cnn: Path, backend: str, budget: int | None
) -> None:
    # The batcher runs a large request in slices, views of the request's decoded body: a
    # runtime that keeps the last slice's input keeps the whole body (issue 17: OpenVINO's
    # infer request held +16 MiB after the largest binary request).
    opened = open_backend(digits_cnn, backend, threads=1, options={"memory_budget_bytes": budget})
    (name,) = [i.name for i in opened.inputs]
    body = np.random.default_rng(5).random((16384, 1, 8, 8), dtype=np.float32)
    expected = opened.run({name: body[:16].copy()})
    held = weakref.ref(body)
    got = opened.run({name: body[:16]})
    del body
    gc.collect()
    assert held() is None, f"{backend} keeps the base of its last input alive"
    for out, value in got.items():
        np.testing.assert_array_equal(value, expected[out])

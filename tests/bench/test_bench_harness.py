from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeshift.bench import bench, index_ranges, load_npz_batches, measure, synthesize_inputs
from edgeshift.errors import BackendError, DataError
from edgeshift.model.shapes import TensorSpec
from edgeshift.runtime import open_backend


def test_bench_counts_and_orders_percentiles(mlp_path: Path) -> None:
    r = bench(mlp_path, iterations=50, warmup=2, batch=4, threads=1)
    assert r.iterations == 50
    assert r.input_shapes == {"x": (4, 8)}
    assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms
    assert r.throughput_items_s == pytest.approx(4 * 1e3 / r.mean_ms)
    assert r.first_result_ms >= r.load_ms > 0
    assert r.peak_rss_bytes > 0
    assert r.runtime_options == {"precision": "fp32", "graph_optimization_level": "all"}


def test_bench_by_duration_runs_at_least_the_minimum(mlp_path: Path) -> None:
    r = bench(mlp_path, duration_s=0.05, warmup=0, threads=1)
    assert r.iterations >= 10


def test_measure_cycles_feed_list(mlp_path: Path) -> None:
    rt = open_backend(mlp_path, threads=1)
    seen: list[int] = []

    class Spy:
        inputs = rt.inputs

        def run(self, feeds):  # type: ignore[no-untyped-def]
            seen.append(int(feeds["x"][0, 0]))
            return rt.run(feeds)

    feeds = [{"x": np.full((1, 8), i, np.float32)} for i in range(3)]
    times = measure(Spy(), feeds, iterations=7, warmup=0)  # type: ignore[arg-type]
    assert len(times) == 7
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_measure_rejects_both_limits(mlp_path: Path) -> None:
    rt = open_backend(mlp_path, threads=1)
    with pytest.raises(BackendError, match="not both"):
        measure(rt, {"x": np.zeros((1, 8), np.float32)}, iterations=3, duration_s=1.0)


def test_token_ids_stay_inside_the_embedding_table(embedding_path: Path) -> None:
    model = onnx.load(embedding_path)
    assert index_ranges(model) == {"input_ids": 10}
    spec = TensorSpec("input_ids", "int64", ("batch", "seq"))
    feeds = synthesize_inputs([spec], {"input_ids": (2, 500)}, int_ranges=index_ranges(model))
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() <= 9
    assert len(np.unique(ids)) == 10  # the whole valid range is used, not only 0 and 1
    r = bench(embedding_path, iterations=3, shapes={"seq": (16,)}, threads=1)
    assert r.input_shapes == {"input_ids": (1, 16)}


def test_masks_are_ones_and_types_zeros() -> None:
    specs = [
        TensorSpec("attention_mask", "int64", (1, 4)),
        TensorSpec("token_type_ids", "int64", (1, 4)),
    ]
    feeds = synthesize_inputs(specs, {s.name: (1, 4) for s in specs})
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1]]
    assert feeds["token_type_ids"].tolist() == [[0, 0, 0, 0]]


def test_npz_batches(tmp_path: Path, mlp_path: Path) -> None:
    x = np.arange(10 * 8, dtype=np.float32).reshape(10, 8)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(10))
    rt = open_backend(mlp_path, threads=1)
    batches = load_npz_batches(tmp_path / "d.npz", rt.inputs, batch=4)
    assert len(batches) == 2  # the partial batch of 2 is dropped
    np.testing.assert_array_equal(batches[1]["x"], x[4:8])
    r = bench(mlp_path, data=tmp_path / "d.npz", batch=4, iterations=4, threads=1)
    assert r.input_shapes == {"x": (4, 8)} and r.data is not None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inp": np.zeros((4, 8), np.float32)}, "no array 'x'"),
        ({"x": np.zeros((4, 8), np.float64)}, "float64.*astype"),
        ({"x": np.zeros((4, 2, 8), np.float32)}, "first axis is samples"),
        ({"x": np.zeros((4, 7), np.float32)}, "axis 1 must be 8"),
        ({"x": np.zeros((1, 8), np.float32)}, "fewer than --batch 2"),
    ],
)
def test_npz_mismatch_is_a_clear_error(
    tmp_path: Path, mlp_path: Path, arrays: dict, message: str
) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        bench(mlp_path, data=tmp_path / "d.npz", batch=2, iterations=1, threads=1)


def test_npz_missing_and_unreadable(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        bench(mlp_path, data=tmp_path / "none.npz", iterations=1)
    (tmp_path / "bad.npz").write_text("garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        bench(mlp_path, data=tmp_path / "bad.npz", iterations=1)

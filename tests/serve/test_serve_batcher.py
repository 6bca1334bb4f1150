"""The dynamic batcher with a fake runtime whose calls we can hold, count and inspect."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

import edgeshift.serve.batcher as batcher_module
from edgeshift.errors import DataError
from edgeshift.model.shapes import TensorSpec
from edgeshift.serve.batcher import (
    ADAPTIVE_GAP_S,
    ADAPTIVE_WAIT,
    Batcher,
    BatcherClosedError,
    QueueFullError,
    _Pending,
    batch_dim_supported,
)


class FakeRuntime:
    """y = 2x + row index within the call, so a wrong split or a wrong batch shows up."""

    def __init__(self, hold_first: bool = True) -> None:
        self.calls: list[list[int]] = []  # the batch shapes of each call
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()
        self.entered = threading.Event()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.calls.append(list(x.shape))
        self.entered.set()
        self.gate.wait(10)
        if np.isnan(x).any():
            raise DataError("NaN in input")
        return {"y": x * 2, "rows": np.full((x.shape[0],), x.shape[0])}


async def _wait_entered(runtime: FakeRuntime) -> None:
    while not runtime.entered.is_set():
        await asyncio.sleep(0.001)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_requests_queued_while_busy_form_one_batch_and_split_back() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=32)
        first = asyncio.ensure_future(batcher.submit({"x": np.full((1, 3), 100.0)}))
        await _wait_entered(runtime)  # the worker is busy with the first request
        rows = [1, 2, 3, 1]
        inputs = [
            np.arange(n * 3, dtype=np.float64).reshape(n, 3) + 10 * i for i, n in enumerate(rows)
        ]
        rest = [asyncio.ensure_future(batcher.submit({"x": x})) for x in inputs]
        await asyncio.sleep(0.01)
        assert batcher.depth == 4
        runtime.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        assert runtime.calls == [[1, 3], [7, 3]]  # 1 alone, then 1+2+3+1 concatenated
        np.testing.assert_array_equal(results[0]["y"], np.full((1, 3), 200.0))
        for x, result in zip(inputs, results[1:], strict=True):
            np.testing.assert_array_equal(result["y"], x * 2)
            np.testing.assert_array_equal(result["rows"], np.full(len(x), 7))

    _run(main())


def test_max_batch_caps_rows_per_call() -> None:
    runtime = FakeRuntime()
    sizes: list[int] = []

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=4, on_batch=sizes.append)
        futures = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))]
        await _wait_entered(runtime)
        futures += [
            asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(9)
        ]
        futures.append(asyncio.ensure_future(batcher.submit({"x": np.zeros((3, 2))})))
        await asyncio.sleep(0.01)
        runtime.gate.set()
        await asyncio.gather(*futures)
        await batcher.close()

    _run(main())
    # 1 alone; 9 singles in 4+4+1 — the 3-row request does not fit the third batch (1+3=4 fits).
    assert [c[0] for c in runtime.calls] == [1, 4, 4, 4]
    assert sizes == [1, 4, 4, 4]


def test_only_equal_shapes_are_concatenated_and_order_is_kept() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=32)
        futures = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))]
        await _wait_entered(runtime)
        for width in (3, 3, 5, 5, 3):
            futures.append(asyncio.ensure_future(batcher.submit({"x": np.zeros((1, width))})))
        await asyncio.sleep(0.01)
        runtime.gate.set()
        results = await asyncio.gather(*futures)
        await batcher.close()
        assert [r["y"].shape[1] for r in results] == [1, 3, 3, 5, 5, 3]

    _run(main())
    assert runtime.calls == [[1, 1], [2, 3], [2, 5], [1, 3]]


def test_models_without_a_batch_dim_run_one_by_one() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=False, max_batch=32)
        futures = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(4)]
        runtime.gate.set()
        await asyncio.gather(*futures)
        await batcher.close()

    _run(main())
    assert runtime.calls == [[1, 2]] * 4


def test_full_queue_is_refused_at_once_with_503() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8, max_queue=2)
        running = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))
        await _wait_entered(runtime)
        queued = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit({"x": np.zeros((1, 2))})
        assert info.value.status == 503
        runtime.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    _run(main())


def test_a_bad_request_fails_alone_not_its_batch() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))
        await _wait_entered(runtime)
        good = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
        bad = asyncio.ensure_future(batcher.submit({"x": np.full((1, 2), np.nan)}))
        runtime.gate.set()
        await first
        np.testing.assert_array_equal((await good)["y"], [[2.0, 2.0]])
        with pytest.raises(DataError, match="NaN"):
            await bad
        await batcher.close()

    _run(main())
    assert runtime.calls == [[1, 2], [2, 2], [1, 2], [1, 2]]  # batch failed, retried alone


def test_close_finishes_queued_requests_then_refuses() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=2)
        futures = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))]
        await _wait_entered(runtime)
        futures += [
            asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(5)
        ]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosedError):
            await batcher.submit({"x": np.zeros((1, 2))})
        runtime.gate.set()
        await closing
        assert all(f.done() and f.exception() is None for f in futures)

    _run(main())
    assert sum(c[0] for c in runtime.calls) == 6


def test_max_delay_waits_for_a_fuller_batch() -> None:
    runtime = FakeRuntime(hold_first=False)

    async def main() -> None:
        # A long delay that a full batch cuts short: the test never waits for it to expire.
        batcher = Batcher("m", runtime, batchable=True, max_batch=2, max_delay_ms=60_000)
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))
        await asyncio.sleep(0.02)  # the worker holds the first request, waiting for more
        assert runtime.calls == []
        second = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
        await asyncio.gather(first, second)
        await batcher.close()

    _run(main())
    assert runtime.calls == [[2, 2]]


def test_an_output_without_batch_rows_is_an_error_not_a_wrong_split() -> None:
    def reduce_all(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"total": np.array([feeds["x"].sum()])}

    async def main() -> None:
        batcher = Batcher("m", reduce_all, batchable=True, max_batch=8)
        a = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
        b = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
        results = await asyncio.gather(a, b, return_exceptions=True)
        await batcher.close()
        assert all("--max-batch 1" in str(r) for r in results)

    _run(main())


def test_batch_dim_detection() -> None:
    dyn = TensorSpec("x", "float32", ("batch", 4))
    unknown = TensorSpec("x", "float32", (None, 4))
    fixed = TensorSpec("x", "float32", (1, 4))
    scalar = TensorSpec("x", "float32", ())
    assert batch_dim_supported([dyn], [unknown])
    assert not batch_dim_supported([dyn], [fixed])
    assert not batch_dim_supported([fixed], [dyn])
    assert not batch_dim_supported([scalar], [dyn])
    assert not batch_dim_supported([TensorSpec("x", "float32", None)], [dyn])


class SlowRuntime:
    """Doubles x after a fixed pause, recording each call's batch size."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self.batches: list[int] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(feeds["x"].shape[0])
        threading.Event().wait(self.pause_s)
        return {"y": feeds["x"] * 2}


async def _closed_loop_round(
    batcher: Batcher, clients: int, gap_s: float, pause_after: int = 0, pause_s: float = 0.0
) -> None:
    """CLIENTS requests of one row, arriving GAP_S apart (and PAUSE_S more after the first
    PAUSE_AFTER), as the clients of an answered batch send their next requests one by one."""
    pending = []
    for i in range(clients):
        pending.append(asyncio.ensure_future(batcher.submit({"x": np.full((1, 2), float(i))})))
        await asyncio.sleep(gap_s + (pause_s if i + 1 == pause_after else 0.0))
    results = await asyncio.gather(*pending)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2.0 * i))


@pytest.mark.parametrize(
    ("delay_ms", "pause_s", "second_round"),
    [
        (None, 0.0, [4]),  # adaptive: waits for as many rows as the last batch had
        (0.0, 0.0, [1, 3]),  # eager: the first arrival runs alone, the rest queue behind it
        (None, 0.25, [2, 2]),  # adaptive, but two clients pause: it stops waiting for them
    ],
)
def test_after_a_batch_the_batcher_waits_for_its_clients_to_return(
    monkeypatch: pytest.MonkeyPatch, delay_ms: float | None, pause_s: float, second_round: list[int]
) -> None:
    # The 0.6 s run bounds the adaptive wait (ADAPTIVE_WAIT runs); arrivals come 5 ms apart,
    # far inside the 100 ms quiet gap (widened from 1 ms, then 30 ms: on a loaded box a 5 ms
    # sleep can take tens of ms, which ended the wait early); the pause is longer than the gap.
    monkeypatch.setattr(batcher_module, "ADAPTIVE_GAP_S", 0.1)
    runtime = SlowRuntime(0.6)

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8, max_delay_ms=delay_ms)
        await _closed_loop_round(batcher, 4, 0.0)  # a first request, then 3 queued behind it
        assert runtime.batches == [1, 3]
        await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 2))}) for _ in range(4)))
        runtime.batches.clear()  # the last batch had 4 rows
        await _closed_loop_round(batcher, 4, 0.005, pause_after=2, pause_s=pause_s)
        await batcher.close()
        # Adaptive: one batch of 4, not the first arrival alone and the rest behind it.
        assert runtime.batches == second_round

    _run(main())


def test_the_adaptive_wait_is_skipped_when_it_cannot_pay() -> None:
    async def main() -> None:
        batcher = Batcher("m", SlowRuntime(0.0), batchable=True, max_batch=8)
        batcher._last_rows, batcher._last_run_s = 4, 0.2
        first = _Pending({"x": np.zeros((1, 2))}, asyncio.get_running_loop().create_future(), 1, ())
        batcher._last_done_s = time.perf_counter()  # just finished: wait for 4 rows
        target, deadline, gap_s = batcher._fill_goal(first, 1)
        assert target == 4 and 0 < deadline - time.perf_counter() <= ADAPTIVE_WAIT * 0.2
        assert gap_s == ADAPTIVE_GAP_S  # ends early once the returning clients stop coming
        assert batcher._fill_goal(first, 4) == (0, 0.0, 0.0)  # as full as the last batch
        batcher._last_done_s -= 1.0  # idle for longer than a run: no burst to wait for
        assert batcher._fill_goal(first, 1) == (0, 0.0, 0.0)
        await batcher.close()

    _run(main())


def test_instances_run_batches_at_the_same_time() -> None:
    runtimes = [FakeRuntime(), FakeRuntime()]

    async def main() -> None:
        batcher = Batcher("m", runtimes, batchable=True, max_batch=1)
        assert batcher.instances == 2
        futures = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 3))})) for _ in range(2)]
        for runtime in runtimes:  # both calls are in flight at once, each on its own instance
            await _wait_entered(runtime)
        for runtime in runtimes:
            runtime.gate.set()
        results = await asyncio.gather(*futures)
        await batcher.close()
        assert [r["y"].tolist() for r in results] == [[[2.0, 2.0, 2.0]]] * 2
        assert [len(r.calls) for r in runtimes] == [1, 1]

    _run(main())


def test_the_first_client_back_may_take_longer_than_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Big answers take a while to encode and write before any client can return: the quiet
    # gap only counts between arrivals, not until the first one. (Margins as in the test
    # above: a 0.6 s run, so the wait lasts at most ADAPTIVE_WAIT runs; a 0.1 s gap.)
    monkeypatch.setattr(batcher_module, "ADAPTIVE_GAP_S", 0.1)
    runtime = SlowRuntime(0.6)

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)
        await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 2))}) for _ in range(4)))
        running = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(4)]
        await asyncio.sleep(0.1)  # that batch of 4 runs; one client is already back
        early = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
        await asyncio.gather(*running)
        await asyncio.sleep(0.15)  # the other three come back after 1.5 times the gap
        await asyncio.gather(early, *(batcher.submit({"x": np.ones((1, 2))}) for _ in range(3)))
        await batcher.close()
        assert runtime.batches == [4, 4, 4]  # not [4, 4, 1, 3]

    _run(main())


def _affine(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = feeds["x"]
    return {"y": x * 2 + 1, "total": x.sum(axis=1)}


def test_a_small_request_runs_between_the_slices_of_a_large_one() -> None:
    runtime = FakeRuntime()
    done: list[str] = []

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)  # slices of 32 rows
        large_x = np.arange(1000 * 3, dtype=np.float64).reshape(1000, 3)
        large = batcher.enqueue({"x": large_x})
        large.add_done_callback(lambda _: done.append("large"))
        await _wait_entered(runtime)  # its first slice runs
        small = batcher.enqueue({"x": np.full((1, 3), 7.0)})
        small.add_done_callback(lambda _: done.append("small"))
        runtime.gate.set()
        large_out, small_out = await asyncio.gather(large, small)
        await batcher.close()
        assert done == ["small", "large"]
        np.testing.assert_array_equal(small_out["y"], np.full((1, 3), 14.0))
        np.testing.assert_array_equal(large_out["y"], large_x * 2)  # the slices, joined
        assert batcher.stats.inference_count == 1001
        assert batcher.stats.execution_count == 2  # one per request, however many slices

    _run(main())
    # 32 rows, the small request, then the rest of the large one slice by slice
    assert [c[0] for c in runtime.calls[:3]] == [32, 1, 32]
    assert sum(c[0] for c in runtime.calls) == 1001 and runtime.calls[-1] == [1000 % 32, 3]


def test_a_sliced_request_gets_what_an_unsliced_run_gives() -> None:
    x = np.random.default_rng(0).normal(size=(1000, 5)).astype(np.float32)

    async def main() -> dict[str, np.ndarray]:
        batcher = Batcher("m", _affine, batchable=True, max_batch=8)
        out = await batcher.submit({"x": x})
        await batcher.close()
        return out

    sliced, whole = _run(main()), _affine({"x": x})
    assert sliced.keys() == whole.keys()
    for name, arr in whole.items():
        assert sliced[name].dtype == arr.dtype
        np.testing.assert_array_equal(sliced[name], arr)


def test_a_large_request_whose_client_left_stops_after_its_slice() -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)
        large = batcher.enqueue({"x": np.zeros((1000, 3))})
        await _wait_entered(runtime)
        large.cancel()
        runtime.gate.set()
        assert (await batcher.submit({"x": np.ones((1, 3))}))["y"].tolist() == [[2.0] * 3]
        await batcher.close()

    _run(main())
    assert runtime.calls == [[32, 3], [1, 3]]


def test_an_error_in_a_slice_fails_the_large_request_alone() -> None:
    runtime = FakeRuntime(hold_first=False)

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)
        x = np.zeros((100, 3))
        x[70] = np.nan  # in the third slice
        with pytest.raises(DataError, match="NaN"):
            await batcher.submit({"x": x})
        assert (await batcher.submit({"x": np.ones((1, 3))}))["y"].tolist() == [[2.0] * 3]
        await batcher.close()

    _run(main())
    assert runtime.calls == [[32, 3], [32, 3], [32, 3], [1, 3]]


def _large_and_small(sizes: dict[str, int]) -> tuple[list[list[int]], list[str]]:
    """Enqueue SIZES (name -> rows, 3 columns, the value of x its order) with the first held
    in its first slice; (the runtime's calls, the order the requests were answered in)."""
    runtime = FakeRuntime()
    done: list[str] = []

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)  # slices of 32 rows
        futures: dict[str, asyncio.Future[dict[str, np.ndarray]]] = {}
        for index, (key, rows) in enumerate(sizes.items()):
            futures[key] = batcher.enqueue({"x": np.full((rows, 3), float(index))})
            futures[key].add_done_callback(lambda _, key=key: done.append(key))
            if index == 0:
                await _wait_entered(runtime)
        runtime.gate.set()
        answers = await asyncio.gather(*futures.values())
        for index, (key, answer) in enumerate(zip(futures, answers, strict=True)):
            want = np.full((sizes[key], 3), 2.0 * index)  # its own rows, whatever ran between
            np.testing.assert_array_equal(answer["y"], want)
        assert batcher.depth == 0
        await batcher.close()

    _run(main())
    return runtime.calls, done


def test_a_small_request_overtakes_a_waiting_large_one() -> None:
    calls, done = _large_and_small({"a": 64, "b": 64, "s": 1, "t": 2})
    # s and t, queued behind b, run together between a's slices, not after all of a and a
    # slice of b; b still starts right after a (large requests keep their order)
    assert [c[0] for c in calls] == [32, 3, 32, 32, 32]
    assert done == ["s", "t", "a", "b"]


def test_large_requests_keep_their_order_and_a_third_waits_its_turn() -> None:
    calls, done = _large_and_small({"a": 64, "b": 64, "c": 64, "s": 1})
    # s is behind two waiting large requests: it overtakes the second (c) once the first (b)
    # runs, so it waits for the rest of a and one slice of b, as before; a, b, c in order
    assert [c[0] for c in calls] == [32, 32, 32, 1, 32, 32, 32]
    assert done == ["a", "s", "b", "c"]


def test_after_a_large_request_a_lone_one_waits_no_longer_than_after_a_max_batch() -> None:
    runtime = SlowRuntime(0.05)  # per call: a 1,000-row request takes 32 calls of 32 rows

    async def main() -> None:
        batcher = Batcher("m", runtime, batchable=True, max_batch=8)
        await batcher.submit({"x": np.zeros((1000, 2))})
        assert len(runtime.batches) == 32
        first = _Pending({"x": np.zeros((1, 2))}, asyncio.get_running_loop().create_future(), 1, ())
        target, deadline, _ = batcher._fill_goal(first, 1)
        # A max batch's share of the run, not the whole run (>= 1.6 s): the refill that
        # follows waits well under one call's pause, or not at all once that share is past.
        waits = deadline - time.perf_counter()
        assert target == 0 or (target == 8 and waits < ADAPTIVE_WAIT * 0.05)
        await batcher.close()

    _run(main())

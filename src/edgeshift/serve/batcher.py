"""Dynamic batching for one loaded model: an asyncio task per model instance takes what is
queued, runs it as one call off the event loop, and hands each request its rows.

No fixed wait by default: a batch is what arrived while the previous batch ran, so a lone
request pays no delay and a busy server batches on its own. Right after a batch, though, its
clients' next requests arrive one by one; the batcher waits (at most half the last batch's run
time, and only while requests keep coming) until as many rows as that batch had are queued,
instead of starting on the first and leaving the rest behind it (measured at 32 clients:
batches of 1 and 31 in turn, not 32).
``max_delay_ms`` > 0 replaces that with a fixed wait for a full batch; 0 never waits. The queue
is bounded; a full queue is refused at once (:class:`QueueFullError`, the server answers 503)
so memory never grows with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeshift.errors import EdgeshiftError, ProtocolError
from edgeshift.model.shapes import TensorSpec
from edgeshift.serve.stats import ModelStats

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
BatchObserver = Callable[[int], None]


class QueueFullError(ProtocolError):
    """The model's queue is full: the server is overloaded (503)."""

    def __init__(self, model: str, max_queue: int) -> None:
        super().__init__(
            f"model {model!r} is overloaded: {max_queue} requests already queued — retry later",
            503,
        )


class BatcherClosedError(ProtocolError):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is unloading or the server is shutting down", 503)


# Longest adaptive wait for a batch to refill, in runs of the last batch. Half a run was
# enough when clients come back through edgeshift's HTTP fast path; a gRPC call costs the
# loop 150-400 µs and HAProxy's hop delays clients too, and with half a run gRPC batches
# shrank to 7 rows of 32 and batches behind HAProxy to 20-26, each shrinking the next wait.
# Two runs (measured, benchmarks/ray_serve.py): single-process gRPC 1.32x the requests per
# second at 26% less CPU each, ray-1 CPU per request 1.37x -> 1.24x single (binary), HTTP
# binary unchanged. A request waits at most this long for others, and only while the
# server is busy (see _fill_goal).
ADAPTIVE_WAIT = 2.0
# ... and it ends when no request came for this long: the returning clients have all arrived
# (tens to hundreds of µs apart, a millisecond or more on a busy box), one is not coming back.
ADAPTIVE_GAP_S = 0.003
SLICE_BATCHES = 4  # a large request runs in slices of this many max batches (see _call_sliced)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def batch_dim_supported(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """True when every input and output has a dynamic first axis, so requests can be stacked."""
    specs = [*inputs, *outputs]
    return bool(specs) and all(
        spec.shape is not None and len(spec.shape) >= 1 and not isinstance(spec.shape[0], int)
        for spec in specs
    )


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    future: asyncio.Future[dict[str, np.ndarray]]
    rows: int  # batch-dim size, 0 when the request cannot join a batch
    signature: tuple[Any, ...]  # requests with equal signatures can be concatenated
    enqueued_s: float = field(default_factory=time.perf_counter)


def _signature(feeds: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...] | None, tuple[Any, ...]]:
    """(rows, signature): the common batch size and the non-batch dims and dtypes of the feeds."""
    rows: int | None = None
    sig: list[Any] = []
    for name, arr in feeds.items():
        if arr.ndim == 0:
            return None, ()
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            return None, ()  # inputs disagree on the batch size: run it alone
        sig.append((name, arr.shape[1:], arr.dtype.str))
    return ((rows,) if rows is not None else None), tuple(sig)


class Batcher:
    """Queue + worker tasks for one model; ``await submit(feeds)`` returns all its outputs.

    RUN is one callable, or one per model instance: each instance has a worker task and a
    thread of its own, so up to that many batches run at once (each takes what is queued when
    its instance falls free)."""

    def __init__(
        self,
        name: str,
        run: RunFn | Sequence[RunFn],
        *,
        batchable: bool,
        max_batch: int = 32,
        max_delay_ms: float | None = None,
        max_queue: int = 512,
        executor: ThreadPoolExecutor | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1:
            raise EdgeshiftError(f"--max-batch must be >= 1, not {max_batch}")
        if max_queue < 1:
            raise EdgeshiftError(f"--max-queue must be >= 1, not {max_queue}")
        if max_delay_ms is not None and max_delay_ms < 0:
            raise EdgeshiftError(f"--max-delay-ms must be >= 0, not {max_delay_ms}")
        self.name = name
        runs = [run] if callable(run) else list(run)
        if not runs:
            raise EdgeshiftError("a batcher needs at least one model instance")
        self.batchable = batchable and max_batch > 1
        self.max_batch = max_batch
        # None: adaptive (see _fill_goal); 0: never wait; > 0: wait that long for a full batch
        self.max_delay_s = None if max_delay_ms is None else max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        # One thread per instance: the runtime parallelises each call over its threads itself.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            len(runs), thread_name_prefix=f"batch-{name}"
        )
        self._on_batch = on_batch
        self.stats = ModelStats()  # Triton's statistics of this model version
        self._closing = False
        self._carry: _Pending | None = None  # taken from the queue but did not fit the batch
        # A large request that small ones queued behind it overtook (see _serve_queued): it
        # runs next, before the carry and the queue.
        self._parked: _Pending | None = None
        self._arrivals: list[asyncio.Future[None]] = []  # workers waiting to fill a batch
        self._last_rows = 0  # the last batch: rows, run time, when it finished
        self._last_run_s = 0.0
        self._last_done_s = 0.0
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(fn), name=f"batcher-{name}-{i}")
            for i, fn in enumerate(runs)
        ]

    @property
    def instances(self) -> int:
        return len(self._tasks)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None) + (self._parked is not None)

    async def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self.enqueue(feeds)

    def enqueue(self, feeds: dict[str, np.ndarray]) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue FEEDS and return the future of its outputs, without a coroutine: the HTTP fast
        path answers from the future's callback. Cancelling the future drops the request from
        its batch if the batch has not started."""
        if self._closing:
            raise BatcherClosedError(self.name)
        rows, signature = _signature(feeds) if self.batchable else (None, ())
        pending = _Pending(
            feeds=feeds,
            future=asyncio.get_running_loop().create_future(),
            rows=rows[0] if rows else 0,
            signature=signature,
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFullError(self.name, self.max_queue) from None
        for arrival in self._arrivals:
            _resolve(arrival)
        return pending.future

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker."""
        self._closing = True
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_executor:
            self._executor.shutdown(wait=True)

    async def _next(self) -> _Pending:
        if self._parked is not None:
            item, self._parked = self._parked, None
            return item
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    def _take_batch(self, first: _Pending) -> tuple[list[_Pending], int]:
        """``first`` plus what is queued with the same signature, up to max_batch rows."""
        batch = [first]
        if first.rows == 0 or first.rows >= self.max_batch:
            return batch, first.rows
        return batch, self._extend(batch, first.rows)

    def _extend(self, batch: list[_Pending], rows: int) -> int:
        """Move queued requests that fit into BATCH; the new row count."""
        while rows < self.max_batch and self._carry is None:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if (
                item.rows == 0
                or item.signature != batch[0].signature
                or rows + item.rows > self.max_batch
            ):
                self._carry = item  # starts the next batch; order is kept
                break
            batch.append(item)
            rows += item.rows
        return rows

    def _fill_goal(self, first: _Pending, rows: int) -> tuple[int, float, float]:
        """(rows worth waiting for, until when, longest quiet gap between arrivals): nothing
        to wait for is (0, 0, 0)."""
        if self.max_delay_s is not None:  # a fixed delay, counted from the first arrival
            if self.max_delay_s == 0:
                return 0, 0.0, 0.0
            return self.max_batch, first.enqueued_s + self.max_delay_s, math.inf
        # Adaptive: right after a batch, the clients it answered send their next requests
        # one by one. Starting on the first of them would run a batch of one and leave the
        # rest to queue behind it (at 32 clients: batches of 1 and 31 in turn). Wait for as
        # many rows as the last batch had, for at most ADAPTIVE_WAIT of its run time; a
        # server that was idle longer than that, or a lone client, never waits.
        now = time.perf_counter()
        if rows >= self._last_rows or now - self._last_done_s > self._last_run_s:
            return 0, 0.0, 0.0
        return self._last_rows, now + ADAPTIVE_WAIT * self._last_run_s, ADAPTIVE_GAP_S

    async def _fill(
        self, batch: list[_Pending], rows: int, target: int, deadline: float, gap_s: float
    ) -> int:
        """Take arrivals into BATCH until it has TARGET rows, DEADLINE passes, or no request
        came for GAP_S after the first. (The first may take longer: the last batch's answers,
        encoded and written on this loop, go out before any client can come back.)"""
        loop = asyncio.get_running_loop()
        arrived = False
        while rows < target and self._carry is None:
            remaining = deadline - time.perf_counter()
            if arrived:
                remaining = min(remaining, gap_s)
            if remaining <= 0:
                break
            arrival = loop.create_future()
            timer = loop.call_later(remaining, _resolve, arrival)
            self._arrivals.append(arrival)
            try:
                await arrival
            finally:
                timer.cancel()
                self._arrivals.remove(arrival)
            grown = self._extend(batch, rows)
            if grown == rows and self._carry is None:
                break  # the timer fired: nothing came
            rows, arrived = grown, True
        return rows

    async def _work(self, run: RunFn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            batch, rows = self._take_batch(first)
            if first.rows:
                target, deadline, gap_s = self._fill_goal(first, rows)
                if target > rows:
                    await self._fill(batch, rows, target, deadline, gap_s)
            live = [p for p in batch if not p.future.done()]  # a client may have gone away
            try:
                if live:
                    await self._execute(loop, run, live)
            finally:
                for _ in range(len(batch)):  # not over batch: `_` would keep its last request
                    self._queue.task_done()
                # Drop the finished batch before waiting for the next one: these locals would
                # keep its requests (up to the body limit each) alive while the model idles.
                del first, batch, live

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, run: RunFn, batch: list[_Pending]
    ) -> None:
        started_ns = time.perf_counter_ns()
        input_ns = lent_ns = 0
        if len(batch) == 1:
            result, lent_ns = await self._call_sliced(loop, run, batch[0])
            results = [result]
            # Time spent on other requests' batches between slices is theirs, not its own.
            started_ns += lent_ns
            infer_done_ns = time.perf_counter_ns()
        else:
            feeds = {
                name: np.concatenate([p.feeds[name] for p in batch], axis=0)
                for name in batch[0].feeds
            }
            input_ns = time.perf_counter_ns() - started_ns
            merged = await self._call(loop, run, feeds)
            infer_done_ns = time.perf_counter_ns()
            if isinstance(merged, BaseException):
                # One bad request must not fail its neighbours: retry each alone.
                results = [await self._call(loop, run, p.feeds) for p in batch]
                infer_done_ns = time.perf_counter_ns()
            else:
                results = self._split(merged, batch)
        started_s = started_ns / 1e9
        rows = sum(max(p.rows, 1) for p in batch)
        self._last_done_s = time.perf_counter()
        # After a request of more than max_batch rows, the adaptive refill waits for a max
        # batch, for at most half of what a max batch of it took: waiting for its row count,
        # or for half its whole run, would hold the next lone request for 0.1-0.25 s
        # (measured after a 65,536-row request of the digits CNN).
        self._last_rows = min(rows, self.max_batch)
        self._last_run_s = (self._last_done_s - started_s) * self._last_rows / rows
        if self._on_batch is not None:
            self._on_batch(rows)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        done_ns = time.perf_counter_ns()
        self.stats.observe_execution(
            [started_ns - lent_ns - int(p.enqueued_s * 1e9) for p in batch],
            rows,
            input_ns,
            infer_done_ns - started_ns - input_ns,
            done_ns - infer_done_ns,
        )

    async def _call_sliced(
        self, loop: asyncio.AbstractEventLoop, run: RunFn, pending: _Pending
    ) -> tuple[dict[str, np.ndarray] | BaseException, int]:
        """(PENDING's outputs, ns spent on other requests meanwhile). A request of more rows
        than a slice runs slice by slice, and one batch of what was queued meanwhile runs
        between slices: a large request delays small ones by one slice, not by its whole run."""
        step = SLICE_BATCHES * self.max_batch
        if not self.batchable or pending.rows <= step:
            return await self._call(loop, run, pending.feeds), 0
        joined: dict[str, np.ndarray] = {}
        lent_ns = 0
        for start in range(0, pending.rows, step):
            part = await self._call(
                loop, run, {n: a[start : start + step] for n, a in pending.feeds.items()}
            )
            if isinstance(part, BaseException):
                return part, lent_ns
            for name, arr in part.items():
                if arr.ndim == 0 or arr.shape[0] != min(step, pending.rows - start):
                    error = EdgeshiftError(
                        f"output {name!r} has shape {list(arr.shape)}, not one row per input "
                        "row: the model's first axis is not a batch axis — serve it with "
                        "--max-batch 1"
                    )
                    return error, lent_ns
                if name not in joined:
                    joined[name] = np.empty((pending.rows, *arr.shape[1:]), arr.dtype)
                joined[name][start : start + len(arr)] = arr
            if pending.future.done():  # the client went away: stop spending on it
                return joined, lent_ns
            if start + step < pending.rows:
                lent_from_ns = time.perf_counter_ns()
                await self._serve_queued(loop, run, step)
                lent_ns += time.perf_counter_ns() - lent_from_ns
        return joined, lent_ns

    async def _serve_queued(self, loop: asyncio.AbstractEventLoop, run: RunFn, step: int) -> None:
        """Run one batch of what is queued now. Large requests keep their order: one that
        waits here runs after the running one. The small requests queued behind it overtake
        it, here, so they wait one slice, not the rest of the running request plus a slice
        of the waiting one. (Behind a second waiting large request they wait their turn.)"""
        if self._parked is None and self._carry is None and self._queue.empty():
            return
        first = await self._next()  # does not wait: something is queued
        if first.rows > step:
            self._parked = first
            if self._carry is None and self._queue.empty():
                return
            # the request behind it: the carry, else the queue's head
            first, self._carry = self._carry or self._queue.get_nowait(), None
            if first.rows > step:
                self._carry = first
                return
        batch, _ = self._take_batch(first)
        live = [p for p in batch if not p.future.done()]
        try:
            if live:
                await self._execute(loop, run, live)
        finally:
            for _ in range(len(batch)):
                self._queue.task_done()

    async def _call(
        self, loop: asyncio.AbstractEventLoop, run: RunFn, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | BaseException:
        try:
            return await loop.run_in_executor(self._executor, run, feeds)
        except Exception as exc:
            return exc

    @staticmethod
    def _split(
        merged: dict[str, np.ndarray], batch: list[_Pending]
    ) -> list[dict[str, np.ndarray] | BaseException]:
        total = sum(p.rows for p in batch)
        for name, arr in merged.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                error = EdgeshiftError(
                    f"output {name!r} has shape {list(arr.shape)}, not {total} rows: the model's "
                    "first axis is not a batch axis — serve it with --max-batch 1"
                )
                return [error] * len(batch)
        out: list[dict[str, np.ndarray] | BaseException] = []
        start = 0
        for p in batch:
            stop = start + p.rows
            out.append({name: arr[start:stop] for name, arr in merged.items()})
            start = stop
        return out

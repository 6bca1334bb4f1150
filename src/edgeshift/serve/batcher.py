"""Dynamic batching for one loaded model: an asyncio task takes what is queued, runs it as one
call off the event loop, and hands each request its rows.

No fixed wait by default: a batch is whatever arrived while the previous batch ran, so a lone
request pays no delay and a busy server batches on its own. ``max_delay_ms`` > 0 waits that long
for more requests to fill a batch. The queue is bounded; a full queue is refused at once
(:class:`QueueFullError`, the server answers 503) so memory never grows with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeshift.errors import EdgeshiftError, ProtocolError
from edgeshift.model.shapes import TensorSpec

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
    """Queue + worker task for one model; ``await submit(feeds)`` returns all its outputs."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        batchable: bool,
        max_batch: int = 32,
        max_delay_ms: float = 0.0,
        max_queue: int = 512,
        executor: ThreadPoolExecutor | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1:
            raise EdgeshiftError(f"--max-batch must be >= 1, not {max_batch}")
        if max_queue < 1:
            raise EdgeshiftError(f"--max-queue must be >= 1, not {max_queue}")
        if max_delay_ms < 0:
            raise EdgeshiftError(f"--max-delay-ms must be >= 0, not {max_delay_ms}")
        self.name = name
        self._run = run
        self.batchable = batchable and max_batch > 1
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        # One thread per model: the runtime parallelises each call over the cores itself.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._on_batch = on_batch
        self._closing = False
        self._carry: _Pending | None = None  # taken from the queue but did not fit the batch
        self._task = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{name}")

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
        return await pending.future

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker."""
        self._closing = True
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._own_executor:
            self._executor.shutdown(wait=True)

    async def _next(self) -> _Pending:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    def _take_batch(self, first: _Pending) -> list[_Pending]:
        """``first`` plus what is queued with the same signature, up to max_batch rows."""
        batch = [first]
        if first.rows == 0 or first.rows >= self.max_batch:
            return batch
        rows = first.rows
        while rows < self.max_batch and self._carry is None:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if (
                item.rows == 0
                or item.signature != first.signature
                or rows + item.rows > self.max_batch
            ):
                self._carry = item  # starts the next batch; order is kept
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _fill(self, batch: list[_Pending]) -> list[_Pending]:
        """Wait up to max_delay for more rows (only when a delay is configured)."""
        deadline = batch[0].enqueued_s + self.max_delay_s
        rows = sum(p.rows for p in batch)
        while rows < self.max_batch and self._carry is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if (
                item.rows == 0
                or item.signature != batch[0].signature
                or rows + item.rows > self.max_batch
            ):
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            batch = self._take_batch(first)
            if self.max_delay_s > 0 and first.rows:
                batch = await self._fill(batch)
            live = [p for p in batch if not p.future.done()]  # a client may have gone away
            try:
                if live:
                    await self._execute(loop, live)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            results = [await self._call(loop, batch[0].feeds)]
        else:
            feeds = {
                name: np.concatenate([p.feeds[name] for p in batch], axis=0)
                for name in batch[0].feeds
            }
            merged = await self._call(loop, feeds)
            if isinstance(merged, BaseException):
                # One bad request must not fail its neighbours: retry each alone.
                results = [await self._call(loop, p.feeds) for p in batch]
            else:
                results = self._split(merged, batch)
        if self._on_batch is not None:
            self._on_batch(sum(max(p.rows, 1) for p in batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    async def _call(
        self, loop: asyncio.AbstractEventLoop, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | BaseException:
        try:
            return await loop.run_in_executor(self._executor, self._run, feeds)
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
